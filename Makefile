# Every target sets itself up: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Flower must not phone home or install app dependencies (see the README).
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_USAGE_STATS_ENABLED=0

.PHONY: federate dashboard demo br35h loopback results test benchmark

$(BIN)/fesf: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 (or newer)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --editable '.[test]'
	touch $@

federate: $(BIN)/fesf  ## the default federation: 3 simulated phantom sites (see the README)
	PATH="$(abspath $(BIN)):$$PATH" flwr run . --stream

dashboard: $(BIN)/fesf  ## the evaluation dashboard on http://127.0.0.1:8050 over ~/.fesf/runs (see the README)
	$(BIN)/fesf-dashboard

demo: $(BIN)/fesf  ## build surrogates for the built-in phantom data (one site, no federation)
	$(BIN)/fesf surrogates --config configs/phantom.yaml

br35h: $(BIN)/fesf  ## build surrogates for ../shared/data/br35h at 128 px (CPU-friendly)
	$(BIN)/fesf surrogates --config configs/br35h.yaml --image-size 128

loopback: $(BIN)/fesf  ## rehearse a TLS-secured, authenticated deployment of two sites on 127.0.0.1
	PATH="$(abspath $(BIN)):$$PATH" deploy/loopback.sh

# The browser tests drive Debian's Chromium: Playwright never downloads a browser.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	@echo "installing Debian's chromium for the dashboard's browser tests"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

results: $(BIN)/fesf  ## the paper's Tables 1-3 on ../shared/data, federated and central: regenerates docs/results.md (about 1.5 h on 2 CPU cores)
	$(BIN)/fesf-reproduce suite configs/results.yaml

test: $(BIN)/fesf $(CHROMIUM)  ## the whole test suite
	$(BIN)/pytest -q

benchmark: $(BIN)/fesf  ## IHM, pipeline, IQEM, federated and deployed round speed (see docs/benchmarks.md)
	$(BIN)/python benchmarks/ihm.py
	PYTHONPATH=. $(BIN)/python benchmarks/federated.py
	PYTHONPATH=. $(BIN)/python benchmarks/deployment.py
