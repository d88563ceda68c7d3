# InterCLR study toolkit. Every target sets up what it needs on a fresh clone.
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PRESET ?= cpu
CLUSTER ?= local
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data test bench

$(VENV)/.done: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data:
	@if [ ! -f $(FASHION_MNIST) ] && [ ! -f $(ROOT)/data/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
		else sudo apt-get install -y -q dataset-fashion-mnist; fi; \
	fi

setup: $(VENV)/.done data

test: setup
	cd $(ROOT) && $(PY) -m pytest -q

bench: setup
	cd $(ROOT) && $(PY) -m bench

STUDIES := labels sampling boundary final
.PHONY: $(addprefix study-,$(STUDIES)) study-all figures ui slurm-up

# run one study (PRESET, CLUSTER), then rebuild its tables and figures from the store;
# UNTIL_DECIDED=1 adds seeds where a comparison is open (MAX_SEEDS, BUDGET_HOURS: its limits)
$(addprefix study-,$(STUDIES)): study-%: setup
	@cd $(ROOT) && status=0; \
	$(PY) -m study run experiments/$*.yaml --preset $(PRESET) --cluster $(CLUSTER) $(if $(filter slurm,$(CLUSTER)),--wait,) \
		$(if $(UNTIL_DECIDED),--until-decided $(if $(MAX_SEEDS),--max-seeds $(MAX_SEEDS),) \
		$(if $(BUDGET_HOURS),--budget-hours $(BUDGET_HOURS),),) || status=$$?; \
	$(PY) -m analysis --study $* || status=$$?; \
	exit $$status

study-all: $(addprefix study-,$(STUDIES))

figures: setup
	cd $(ROOT) && $(PY) -m analysis

ui: setup
	cd $(ROOT) && $(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(ROOT)/mlflow.db}" \
		--host 127.0.0.1 --port $${PORT:-5000}
