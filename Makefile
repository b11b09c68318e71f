# The two commands that work on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The apache-iggy 0.9 SDK lives in its own venv: one venv cannot hold both SDK versions.
SDK09_VENV ?= .venv-sdk09
SDK09_PY := $(SDK09_VENV)/bin/python
DATA_DIR ?= ./local_data
TCP_ADDRESS ?= 127.0.0.1:8090

.PHONY: serve test lint venv dev-venv sdk09-venv clean bench

$(VENV)/.installed: pyproject.toml setup.py src/tidelog/native/stamp.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(SDK09_VENV)/.installed: pyproject.toml setup.py src/tidelog/native/stamp.c
	test -x $(SDK09_PY) || $(PYTHON) -m venv $(SDK09_VENV)
	$(SDK09_PY) -m pip install -q --upgrade pip
	$(SDK09_PY) -m pip install -q -e '.[sdk09]'
	touch $@

venv: $(VENV)/.installed
dev-venv: $(VENV)/.installed-dev
sdk09-venv: $(SDK09_VENV)/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/tidelog serve --data-dir $(DATA_DIR) --tcp-address $(TCP_ADDRESS)

# The fault-injection shim the fault tests preload (tests/faults.py builds it too when pytest
# runs on its own).
build/faultfs.so: tests/faults/faultfs.c
	mkdir -p build
	$(CC) -O2 -Wall -shared -fPIC -o $@ $< -ldl -lpthread

# The main suite (0.8 SDK; tests/conftest.py keeps tests/sdk09 out of it), then the 0.9 SDK
# interop suite from its own venv; then every suite that starts servers again, each server
# running two shard processes. All must pass.
SERVER_SUITES := tests/integration tests/compat tests/crash tests/harness
TWO_SHARDS := TIDELOG_SYSTEM_SHARDING_CPU_ALLOCATION=2
test: $(VENV)/.installed-dev $(SDK09_VENV)/.installed build/faultfs.so
	$(PY) -m pytest -n 2 -q
	$(SDK09_PY) -m pytest -n 2 -q tests/sdk09
	$(TWO_SHARDS) $(PY) -m pytest -n 2 -q $(SERVER_SUITES)
	$(TWO_SHARDS) $(SDK09_PY) -m pytest -n 2 -q tests/sdk09

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(SDK09_VENV) build src/*.egg-info
