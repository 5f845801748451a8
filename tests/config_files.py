"""The YAML files of configs/ that configure a given job: each says so on its first line."""
import glob


def yamls_for(job: str) -> list[str]:
    """Every configs/*.yaml whose first line is the command that runs it with `jobs.<job>`."""
    paths = []
    for path in sorted(glob.glob("configs/*.yaml")):
        with open(path) as f:
            if f"jobs.{job}" in f.readline():
                paths.append(path)
    return paths
