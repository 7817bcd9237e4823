# epropnp: the two commands that matter are `make demo` and `make test`; each sets up the venv
# first if needed (tools/setup_env.sh: a no-op when the venv is up to date).
#
# EPROPNP_VENV overrides the venv location (default: .venv in this directory).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
EPROPNP_VENV ?= $(REPO)/.venv
export EPROPNP_VENV
# Every recipe that runs project code runs inside the venv environment (tools/env.sh).
IN_VENV := cd "$(REPO)" && source tools/env.sh &&

.PHONY: help setup demo demo-pnp test lint typecheck pytest clean-venv

help:
	@echo "make demo        set up the venv if needed, then run the main demo (python -m epropnp_ros.demo):"
	@echo "                 nuScenes-format scene -> rosbag2 -> detector nodes -> DetectionEval -> video"
	@echo "make demo-pnp    the PnP layer alone (python -m epropnp_lib.pnp_demo)"
	@echo "make test        set up the venv if needed, then ruff, mypy and pytest"
	@echo "make lint        ruff check ."
	@echo "make typecheck   mypy"
	@echo "make pytest      pytest only"
	@echo "make setup       create / check the venv ($(EPROPNP_VENV))"
	@echo "make clean-venv  delete the venv"

setup:
	@bash "$(REPO)/tools/setup_env.sh"

demo: setup
	$(IN_VENV) python -m epropnp_ros.demo

demo-pnp: setup
	$(IN_VENV) python -m epropnp_lib.pnp_demo

test: setup
	$(IN_VENV) ruff check .
	$(IN_VENV) mypy
	$(IN_VENV) pytest

lint: setup
	$(IN_VENV) ruff check .

typecheck: setup
	$(IN_VENV) mypy

pytest: setup
	$(IN_VENV) pytest

clean-venv:
	rm -rf "$(EPROPNP_VENV)" "$(EPROPNP_VENV).setup.lock"
