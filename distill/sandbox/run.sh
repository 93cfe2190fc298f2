#!/bin/bash
# Runs inside the sandbox, in /job, as `run.sh install` or `run.sh run`: the two phases are two sandbox
# invocations so that each has its own network setting and time limit. The venv lives at /env, the
# same path in both phases, because a venv hard-codes its own path in its scripts. The Modal backend runs
# this same script, where Python is the image's /usr/local/bin/python3: the first python3 on the PATH.
set -u

case "${1:-}" in
install)
  if [ ! -x /env/bin/python ]; then
    python3 -m venv /env || exit
  fi
  # shellcheck disable=SC1091
  source /env/bin/activate
  # The model's runscript only installs dependencies: a failing step must fail the install, not be
  # followed by a program that dies on a missing import.
  set -e
  # shellcheck disable=SC1091
  source ./runscript.sh
  ;;
run)
  # shellcheck disable=SC1091
  source /env/bin/activate
  # The recorder (audit.py, mounted as sitecustomize) starts before main.py when the host asked for it.
  if [ -n "${DISTILL_RECORD:-}" ]; then
    export PYTHONPATH=/sandbox/record
  fi
  exec python main.py
  ;;
*)
  echo "usage: run.sh install|run" >&2
  exit 2
  ;;
esac
