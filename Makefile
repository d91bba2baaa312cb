# pacs-ai-node: `make run` starts the node, `make test` runs the tests. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := orthanc orthanc-dicomweb orthanc-python dcmtk dicom3tools chromium openssl curl
# The OHIF viewer the viewer tests and `make demo` use: pinned, checked against the registry's hash.
OHIF_VERSION   := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR       := .cache/ohif
OHIF_STAMP     := $(OHIF_DIR)/.v$(OHIF_VERSION)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=600 -q -y
CONFIG ?= deploy/node.yaml
# Local Triton for development and tests (deploy/triton/README.md): its own environment under
# .cache/triton (nvidia-pytriton holds numpy below 2; the node's .venv keeps numpy 2).
TRITON_HOME  := .cache/triton
TRITON_STAMP := $(TRITON_HOME)/.installed
# MONAI Deploy App SDK, for the benchmark that runs the same job through it (its own venv).
APPSDK_VENV  := .cache/bench/appsdk-venv
APPSDK_STAMP := $(APPSDK_VENV)/.installed

.PHONY: help install system-deps viewer-deps triton-deps appsdk-deps triton run demo bench test test-fast lint typecheck check train clean

help:
	@echo "make run        install what is missing, then start the node ($(CONFIG))"
	@echo "make test       install what is missing (system packages too), run ruff, mypy and every test"
	@echo "make test-fast  the tests without the slow end-to-end ones"
	@echo "make demo       Orthanc + the node + the OHIF viewer, with a chest CT sent through"
	@echo "make bench      issue-6 benchmarks (receive/STOW-RS throughput, time to result, peak RSS, App SDK, Triton): one table of ratios"
	@echo "make triton     a local Triton (tritonserver 2.51) serving model_repository/ on 127.0.0.1:8000/8001"
	@echo "make check      ruff and mypy"
	@echo "make train      retrain the shipped models (lung, nodule, CT region) from ../shared/data"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[torch,triton,onnx]' --group dev
	touch $@

install: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(APT) update && $(APT) install --no-install-recommends $$missing; \
	fi

$(OHIF_STAMP):
	@command -v npm >/dev/null || { $(APT) update && $(APT) install --no-install-recommends nodejs npm; }
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	@actual="sha512-$$(openssl dgst -sha512 -binary $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz | base64 -w0)"; \
	if [ "$$actual" != "$(OHIF_INTEGRITY)" ]; then \
	  echo "OHIF $(OHIF_VERSION) tarball does not match its pinned hash"; exit 1; fi
	tar -xzf $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR) package/dist
	rm $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz
	touch $@

viewer-deps: system-deps $(OHIF_STAMP)

$(TRITON_STAMP): deploy/triton/install.sh deploy/triton/requirements.txt deploy/triton/constraints.txt
	PYTHON=$(PYTHON) TRITON_HOME=$(TRITON_HOME) deploy/triton/install.sh
	touch $@

triton-deps: $(TRITON_STAMP)

$(APPSDK_STAMP): tests/bench/appsdk-constraints.txt | $(STAMP)
	rm -rf $(APPSDK_VENV)
	$(BIN)/python -m tests.bench.appsdk --install
	touch $@

appsdk-deps: $(APPSDK_STAMP)

triton: triton-deps
	TRITON_HOME=$(TRITON_HOME) deploy/triton/start-local.sh

run: install
	$(BIN)/pacs-ai-node serve --config $(CONFIG)

test: install viewer-deps triton-deps appsdk-deps check
	$(BIN)/python -m pytest

test-fast: install viewer-deps triton-deps appsdk-deps
	$(BIN)/python -m pytest -m "not slow"

demo: install viewer-deps
	$(BIN)/python -m tests.demo

bench: install system-deps triton-deps appsdk-deps
	$(BIN)/python -m tests.bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck

train: install
	$(BIN)/python -m training.lung_seg.train --data ../shared/data --out model_repository
	$(BIN)/python -m training.nodule_det.train --data ../shared/data --out model_repository
	$(BIN)/python -m training.ct_region.train --data ../shared/data --out model_repository

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
