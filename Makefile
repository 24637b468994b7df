# Two commands do all the set-up on a fresh machine:
#   make demo   # builds .venv, runs the whole pipeline on the built-in default data
#   make test   # builds .venv, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FIXTURES := $(abspath data/fixtures)

# Settings live in conceptmine.yaml (environment variables override it). Without a
# NUSCENES_DATAROOT, `make demo` and `make ui` both use conceptmine.demo.yaml: the built-in demo
# data (both fixtures merged into data/demo-dataroot, 4 scenes; files symlinked, never copied)
# with its tiny-data choices (six cameras, a 20% + 20% split).
DEMO_DATAROOT := $(abspath data/demo-dataroot)
ifeq ($(strip $(NUSCENES_DATAROOT)),)
demo ui: export CONCEPTMINE_CONFIG ?= $(abspath conceptmine.demo.yaml)
endif
export DAGSTER_HOME ?= $(abspath data/dagster_home)
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1
export YOLO_CONFIG_DIR ?= $(abspath data/.ultralytics)

.PHONY: demo test ui install browser clean-data

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	@if [ -z "$(NUSCENES_DATAROOT)" ]; then \
	  $(BIN)/conceptmine synth-dataroot --out $(DEMO_DATAROOT) \
	    $(FIXTURES)/nuscenes-real-slice $(FIXTURES)/nuscenes-udacity-highway; fi
	@$(BIN)/conceptmine demo

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
