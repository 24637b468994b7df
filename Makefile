# Two commands do all the set-up on a fresh machine:
#   make demo   # builds .venv, runs the whole pipeline on the built-in default data
#   make test   # builds .venv, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FIXTURES := $(abspath data/fixtures)

# Defaults for local runs; every one can be overridden from the environment. The built-in demo
# data is both fixtures merged into one dataroot (4 scenes; files symlinked, never copied).
DEMO_DATAROOT := $(abspath data/demo-dataroot)
export NUSCENES_DATAROOT ?= $(DEMO_DATAROOT)
export NUSCENES_VERSION ?= v1.0-mini
export CONCEPTMINE_STORE ?= $(abspath data/store)
export CONCEPTMINE_PROFILE ?= offline
export CONCEPTMINE_YOLO_WEIGHTS ?= $(FIXTURES)/models/yolov8n_int8.tflite
export DAGSTER_HOME ?= $(abspath data/dagster_home)
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1
export YOLO_CONFIG_DIR ?= $(abspath data/.ultralytics)
# The demo set has 5 samples: 20% target + 20% random gives a split of 2 (10% of 5 rounds to 0).
DEMO_ARGS ?= --target-frac 0.2 --random-frac 0.2

.PHONY: demo test ui install browser clean-data

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	@if [ "$(NUSCENES_DATAROOT)" = "$(DEMO_DATAROOT)" ]; then \
	  $(BIN)/conceptmine synth-dataroot --out $(DEMO_DATAROOT) \
	    $(FIXTURES)/nuscenes-real-slice $(FIXTURES)/nuscenes-udacity-highway; fi
	$(BIN)/conceptmine demo $(DEMO_ARGS)

# Debian's Chromium for the browser tests (they skip, saying why, where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: browser tests will skip"

test: $(BIN)/.installed browser
	$(BIN)/python -m pytest

ui: $(BIN)/.installed
	$(BIN)/dagster dev -w workspace.yaml

clean-data:
	rm -rf data/store data/splits data/gallery data/demo-dataroot
