# pacs-ai-node: `make run` starts the node, `make test` runs the tests. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=600 -q -y
CONFIG ?= deploy/node.yaml

.PHONY: help install system-deps run test test-fast lint typecheck check train clean

help:
	@echo "make run        install what is missing, then start the node ($(CONFIG))"
	@echo "make test       install what is missing (system packages too), run ruff, mypy and every test"
	@echo "make test-fast  the tests without the slow end-to-end ones"
	@echo "make check      ruff and mypy"
	@echo "make train      retrain the shipped lung model from ../shared/data"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[torch]' --group dev
	touch $@

install: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(APT) update && $(APT) install --no-install-recommends $$missing; \
	fi

run: install
	$(BIN)/pacs-ai-node serve --config $(CONFIG)

test: install system-deps check
	$(BIN)/python -m pytest

test-fast: install system-deps
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck

train: install
	$(BIN)/python -m training.lung_seg.train --data ../shared/data --out model_repository

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
