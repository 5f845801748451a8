"""The job-wide rate limit through the real job: achieved vs allowed requests/min against an endpoint
with a hard limit, with and without generation.openai.requests_per_minute.

    python benchmarks/bench_rate_limit.py [--rpm 1200] [--window 5] [--seeds 48] [--rounds 2] [--actors 2]

Starts the fake OpenAI-compatible endpoint of the tests (tests/openai_fakes.RateLimitedServer: at most
rpm x window / 60 requests in any `window` seconds, 429 beyond, x-ratelimit-* headers), then runs
`python -m jobs.evolve` (Ray Data, a pool of `actors` actors, the bundled seeds) against it twice, one
after the other: without a limit (each actor's client retries 429s on its own) and with
requests_per_minute = the endpoint's limit. Prints, for each, the requests admitted per minute while the
job sent them, the 429s (after the first window too) and the requests that failed for good, then
achieved/allowed last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.openai_fakes import RateLimitedServer  # noqa: E402

KEY_ENV = "EVOLRAY_BENCH_RATE_KEY"


def run_job(server: RateLimitedServer, args, out: str, limit: int | None) -> dict:
    overrides = [f"output.path={out}", "output.overwrite=true", f"seeds.limit={args.seeds}", "output.buckets=8",
                 f"evolve.rounds={args.rounds}", "generation.backend=openai", "generation.model=fake-model",
                 f"generation.openai.base_url={server.url}", f"generation.openai.api_key_env={KEY_ENV}",
                 f"generation.concurrency=[{args.actors},{args.actors}]", f"generation.num_cpus={1 / args.actors:g}",
                 "generation.max_chains=8", "ray.num_cpus=2"]
    if limit:
        overrides.append(f"generation.openai.requests_per_minute={limit}")
    env = dict(os.environ, **{KEY_ENV: "bench", "PYTHONPATH": str(ROOT)})
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", *overrides], cwd=ROOT,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads(Path(out, "summary.json").read_text())
    return {"summary": summary, "wall": time.monotonic() - start}


def measure(args, limit: int | None) -> float:
    server = RateLimitedServer(requests_per_minute=args.rpm, window_s=args.window)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_job(server, args, tmp, limit)
    finally:
        server.close()
    times = [t for t, _ in server.admitted]
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60
    late = [t for t in server.rejected if t > times[0] + args.window]
    summary = result["summary"]
    print(f"{'limit ' + str(limit) + '/min' if limit else 'no limit':>16}: {len(times)} requests admitted at "
          f"{achieved:.0f}/min (allowed {args.rpm}); 429s {len(server.rejected)} ({len(late)} after the first "
          f"{args.window:g} s); failed for good {summary['errors'] + summary['seeds']['errors']}; job wall "
          f"{result['wall']:.1f} s", flush=True)
    return achieved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    measure(args, None)
    achieved = measure(args, args.rpm)
    print(f"achieved/allowed requests/min with the job-wide limit: {achieved / args.rpm:.3f}")


if __name__ == "__main__":
    main()
