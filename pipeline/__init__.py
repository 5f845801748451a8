"""The pipeline above the jobs: evolve -> train -> evaluate composed as one Ray job (config.py),
run stage by stage (run.py)."""
