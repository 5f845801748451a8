"""Near-duplicate removal at scale: the evolve job's finish stage on Ray vs the same stage in one
process, on one output folder of N records.

    python benchmarks/bench_dedupe.py [--records 1000000] [--buckets 256] [--sides baseline,ray1,ray2]

The folder is written in the evolve job's own layout (records/ and training/ bucket files, as the
echo backend's runs write them) with synthetic instructions: random words of a 20K-word vocabulary,
8-60 words each, and a known number of planted near-copies (5%): an earlier original of at least
30 words, upper-cased, with one word appended (Jaccard of 3-word shingles >= 28/29; LSH misses such
a pair with a chance of ~1e-8). Every side must mark exactly the planted copies, and all sides the
same rows. It is a shortcut around the generation step (the echo backend's canned rewrites are all
alike); the stage itself is the path the job runs, `evol.curation.curate` (contamination off, so
the figures are the MinHash-LSH stage's), on a fresh copy of the folder each.

Each side runs in a process of its own: the baseline is `curate` in one process without Ray (the
same functions, every file one block: what the job does for a small output); the Ray sides run it
on a local Ray of 1 and of 2 CPUs. Prints records/s, seconds, the driver's peak RSS and the
duplicates each found; then the ratios Ray 2 CPUs / 1 CPU and Ray 2 CPUs / baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_SHARE, COPY_MIN_WORDS = 0.05, 30

WRITE = r"""
import json, sys
import numpy as np
from evol.output import write_bucket
from evol.records import KEPT, empty_record
out, count, buckets, share, min_words = sys.argv[1], *map(int, sys.argv[2:4]), float(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
vocab = [f"w{x:x}" for x in rng.integers(0, 10**9, 20000)]
lengths = rng.integers(8, 61, count)
ids = rng.integers(0, len(vocab), int(lengths.sum()))
ends = np.cumsum(lengths)
copy = rng.random(count) < share
pick = rng.random(count)
texts, sources, planted = [], [], 0
for i in range(count):
    if copy[i] and sources:  # a near-copy of an earlier original
        texts.append(texts[sources[int(pick[i] * len(sources))]].upper() + " " + vocab[ids[ends[i] - 1]])
        planted += 1
    else:
        texts.append(" ".join(map(vocab.__getitem__, ids[ends[i] - lengths[i]:ends[i]].tolist())))
        if lengths[i] >= min_words:
            sources.append(i)
per = -(-count // buckets)
for b in range(buckets):
    rows = [empty_record(id=f"s{i:08d}", root_id=f"s{i:08d}", round=i % 4, op="seed", instruction=texts[i],
                         response="An answer.", status=KEPT) for i in range(b * per, min(count, (b + 1) * per))]
    write_bucket(out, b, rows, train_on_truncated=False)
print("RESULT " + json.dumps({"planted": planted}))
"""

SIDE = r"""
import hashlib, json, resource, sys, time
import pyarrow.parquet as pq
from common.config import load_config
from evol.config import EvolveConfig
from evol.curation import curate
from evol.output import record_files
out, cpus = sys.argv[1], int(sys.argv[2])
cfg = load_config(EvolveConfig, "configs/local.yaml", [f"output.path={out}", "decontamination.enabled=false",
                  f"dedupe.in_process_records={0 if cpus else 10**12}"])
ray = None
if cpus:
    import ray
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
start = time.time()
result = curate(ray, cfg, out + "/records", [])
seconds, rss_mb = time.time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the check
marked = sorted((row["id"], row["duplicate_of"]) for f in record_files(out + "/records") for row in
                pq.read_table(f, columns=["id", "duplicate_of"], filters=[("status", "=", "duplicate")]).to_pylist())
print("RESULT " + json.dumps({"seconds": seconds, "rows": result["checked_rows"], "in_process": result["in_process"],
      "duplicates": result["dedupe"]["removed"], "digest": hashlib.sha256(repr(marked).encode()).hexdigest()[:16],
      "rss_mb": rss_mb}))
"""

SIDES = {"baseline": ("one process (no Ray)", 0), "ray1": ("ray, 1 CPU", 1), "ray2": ("ray, 2 CPUs", 2)}


def child(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=256)
    parser.add_argument("--sides", default="baseline,ray1,ray2", help=f"some of {','.join(SIDES)}")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        written = os.path.join(tmp, "written")
        planted = child(WRITE, written, args.records, args.buckets, COPY_SHARE, COPY_MIN_WORDS)["planted"]
        print(f"{args.records:,} records in {args.buckets} buckets, {planted:,} planted near-copies", flush=True)
        for side in args.sides.split(","):
            name, cpus = SIDES[side]
            folder = os.path.join(tmp, side)
            shutil.copytree(written, folder)
            r = results[name] = child(SIDE, folder, cpus)
            shutil.rmtree(folder)
            print(f"{name:<22} {r['rows'] / r['seconds']:>9,.0f} records/s  {r['seconds']:>7.1f} s  driver peak RSS "
                  f"{r['rss_mb']:>6.0f} MB  duplicates {r['duplicates']:,} (marks {r['digest']})", flush=True)
    if any(r["duplicates"] != planted for r in results.values()) or len({r["digest"] for r in results.values()}) > 1:
        sys.exit("the sides disagree with each other or with the planted copies")
    seconds = {side: results[SIDES[side][0]]["seconds"] for side in SIDES if SIDES[side][0] in results}
    if {"ray1", "ray2"} <= set(seconds):
        print(f"ray 2 CPUs vs 1 CPU: {seconds['ray1'] / seconds['ray2']:.2f}x")
    if {"baseline", "ray2"} <= set(seconds):
        print(f"ray (2 CPUs) / one process, records/s: {seconds['baseline'] / seconds['ray2']:.2f}x")


if __name__ == "__main__":
    main()
