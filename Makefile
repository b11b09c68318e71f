# The two commands that work on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./local_data
TCP_ADDRESS ?= 127.0.0.1:8090

.PHONY: serve test lint venv dev-venv clean bench

$(VENV)/.installed: pyproject.toml setup.py src/tidelog/native/stamp.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed
dev-venv: $(VENV)/.installed-dev

serve: $(VENV)/.installed
	$(VENV)/bin/tidelog serve --data-dir $(DATA_DIR) --tcp-address $(TCP_ADDRESS)

# The fault-injection shim the fault tests preload (tests/faults.py builds it too when pytest
# runs on its own).
build/faultfs.so: tests/faults/faultfs.c
	mkdir -p build
	$(CC) -O2 -Wall -shared -fPIC -o $@ $< -ldl -lpthread

test: $(VENV)/.installed-dev build/faultfs.so
	$(PY) -m pytest -n 2 -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info
