# Two commands do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA_DIR ?= var
APT_UPDATED := /tmp/.codedistiller-apt-updated

.PHONY: run test lint setup setup-dev sysdeps sysdeps-test clean

# The secret key is made once and kept; only the site's own commands read it.
run: export SECRET_KEY_FILE ?= $(abspath $(DATA_DIR))/secret_key
run: setup sysdeps $(DATA_DIR)/secret_key
	$(PY) manage.py migrate --no-input
	$(PY) manage.py collectstatic --no-input -v0
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve

test: setup-dev sysdeps sysdeps-test
	$(PY) -m pytest

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
$(VENV)/.installed: requirements.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements-dev.txt
	touch $@ $(VENV)/.installed

$(DATA_DIR)/secret_key:
	mkdir -p $(DATA_DIR)
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

# System packages: bubblewrap for the sandbox (and git, which gitpython drives), Chromium for the browser tests.
sysdeps:
	@bash .ci/apt-install bwrap:bubblewrap git:git setpriv:util-linux prlimit:util-linux $$(/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || echo no-ensurepip:python3-venv)

sysdeps-test:
	@bash .ci/apt-install chromium:chromium

clean:
	rm -rf $(VENV) staticfiles .pytest_cache test-results
