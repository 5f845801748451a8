"""python -m jobs.evolve --config configs/local.yaml [--estimate] [key.sub=value ...]

The same command runs under `ray job submit -- python -m jobs.evolve ...` on a cluster.
"""
import sys

from common.config import run_job
from evol.config import EvolveConfig


def main(argv=None) -> int:
    from evol.estimate import estimate_evolve
    from evol.run import run_evolve

    return run_job(EvolveConfig, run_evolve, "Evolve seed instructions with Evol-Instruct on Ray.", argv,
                   estimate=estimate_evolve)


if __name__ == "__main__":
    sys.exit(main())
