"""Near-duplicate removal at scale: the evolve job's finish stage on Ray vs the same MinHash-LSH in
one process, on one output folder of N records.

    python benchmarks/bench_dedupe.py [--records 1000000] [--buckets 256]

The folder is written in the evolve job's own layout (records/ and training/ bucket files) with
synthetic instructions: random words of a 20K-word vocabulary, 8-60 words each, and 5% near-copies of
an earlier row (case changed, a word added). It is a shortcut around the generation step (the echo
backend's canned rewrites are all alike): the stage itself is the path the job runs,
`evol.curation.curate` (contamination off here, so both sides do the same work). Each side runs in a
process of its own: the Ray stage with 1 and with 2 CPUs, and the baseline, the same pure
functions (evol/dedupe.py) over all rows at once without Ray. Prints records/s, the driver's peak RSS
and the duplicates each found; the last line is the ratio Ray (2 CPUs) / baseline.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRITE = r"""
import random, sys
from evol.output import write_bucket
from evol.records import KEPT, empty_record
out, count, buckets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
vocab = [f"w{rng.randrange(10**9):x}" for _ in range(20000)]
texts = []
for i in range(count):
    if texts and rng.random() < 0.05:  # a near-copy of an earlier row
        words = texts[rng.randrange(len(texts))].split()
        text = " ".join(words[:-1] + [words[-1].upper(), rng.choice(vocab)])
    else:
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 60)))
    texts.append(text)
per = -(-count // buckets)
for b in range(buckets):
    rows = [empty_record(id=f"s{i:08d}", root_id=f"s{i:08d}", round=i % 4, op="seed", instruction=texts[i],
                         response="An answer.", status=KEPT) for i in range(b * per, min(count, (b + 1) * per))]
    write_bucket(out, b, rows, train_on_truncated=False)
"""

RAY_SIDE = r"""
import json, resource, sys, time
import ray
from common.config import load_config
from evol.config import EvolveConfig
from evol.curation import curate
out, cpus = sys.argv[1], int(sys.argv[2])
cfg = load_config(EvolveConfig, "configs/local.yaml", [f"output.path={out}", "decontamination.enabled=false"])
ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
start = time.time()
result = curate(ray, cfg, out + "/records", [])
print("RESULT " + json.dumps({"seconds": time.time() - start, "rows": result["checked_rows"],
      "duplicates": result["dedupe"]["removed"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE = r"""
import json, resource, sys, time
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
from evol.dedupe import band_keys, components, lsh_params, signatures, similarity, sketches
from evol.output import record_files
out = sys.argv[1]
start = time.time()
table = pa.concat_tables(pq.read_table(f, columns=["id", "round", "instruction"]) for f in record_files(out + "/records"))
order = np.lexsort((np.array(table["id"].to_pylist()), table["round"].to_numpy()))  # (round, id): earliest first
texts = table["instruction"].to_pylist()
sigs = signatures(texts, 3, 128)
bands, rows = lsh_params(0.7, 128)
rank = np.empty(len(order), np.int64)
rank[order] = np.arange(len(order))
keys, sk = band_keys(sigs, bands, rows), sketches(sigs)
pairs = set()
for band in range(bands):
    by_key = np.lexsort((rank, keys[:, band]))
    k = keys[by_key, band]
    starts = np.r_[True, k[1:] != k[:-1]]
    first = by_key[np.maximum.accumulate(np.where(starts, np.arange(len(k)), 0))]
    pairs.update(zip(by_key[~starts].tolist(), first[~starts].tolist()))
edges = np.array([(rank[a], rank[b]) for a, b in pairs if similarity(sk[a], sk[b]) >= 0.7], np.int64).reshape(-1, 2)
labels = components(len(texts), edges)
print("RESULT " + json.dumps({"seconds": time.time() - start, "rows": len(texts),
      "duplicates": int((labels != np.arange(len(texts))).sum()),
      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), **__import__("os").environ})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or (code != WRITE and not lines):
        sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        child(WRITE, tmp, args.records, args.buckets)
        results = {"baseline (one process)": child(BASELINE, tmp), "ray, 1 CPU": child(RAY_SIDE, tmp, 1),
                   "ray, 2 CPUs": child(RAY_SIDE, tmp, 2)}
    for name, r in results.items():
        print(f"{name:<24} {r['rows'] / r['seconds']:>10,.0f} records/s  {r['seconds']:>7.1f} s  "
              f"driver peak RSS {r['rss_mb']:>6.0f} MB  duplicates {r['duplicates']}")
    ray1, ray2, base = (results[k]["seconds"] for k in ("ray, 1 CPU", "ray, 2 CPUs", "baseline (one process)"))
    print(f"ray 2 CPUs vs 1 CPU: {ray1 / ray2:.2f}x")
    print(f"ray (2 CPUs) / one-process baseline, records/s: {base / ray2:.2f}x")


if __name__ == "__main__":
    main()
