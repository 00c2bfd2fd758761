# Every target sets itself up: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Flower must not phone home or install app dependencies (uv environments of several GB), nor
# Ray report usage: the same switches as fesf_fed.deployment.processes.QUIET_FLOWER_ENV. One variable per
# line: GNU make's `export A=0 B=1` exports only A, with "0 B=1" as its value.
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_USAGE_STATS_ENABLED=0

.PHONY: federate stop dashboard demo br35h audit loopback results test test-faults benchmark

$(BIN)/fesf: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 (or newer)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --editable '.[test]'
	touch $@

# Run settings for `make federate`, as `flwr run --run-config` takes them: make federate RUN_CONFIG="mode='plaintext'"
RUN_CONFIG ?=
RUN_CONFIG_ARGS = $(if $(RUN_CONFIG),--run-config "$(RUN_CONFIG)")

federate: $(BIN)/fesf  ## the default federation: 3 simulated hospitals on the built-in demo set (see the README)
	$(BIN)/fesf-server check $(RUN_CONFIG_ARGS)
	@# flwr run exits 0 however the run ended: fesf-server status says how it did, and fails the make
	@# unless it finished with every site (--since: this run, not an earlier one).
	started=$$(date +%s); PATH="$(abspath $(BIN)):$$PATH" flwr run . --stream $(RUN_CONFIG_ARGS); \
		flwr=$$?; $(BIN)/fesf-server status --since $$started && exit $$flwr

stop: | $(BIN)/fesf  ## stop the local SuperLink that `flwr run` leaves running (this FLWR_HOME's only, by PID)
	$(BIN)/fesf-server stop-local

dashboard: $(BIN)/fesf  ## the evaluation dashboard on http://127.0.0.1:8050 over ~/.fesf/runs (see the README)
	$(BIN)/fesf-dashboard

demo: $(BIN)/fesf  ## build surrogates for the built-in phantom data (one site, no federation)
	$(BIN)/fesf surrogates --config configs/phantom.yaml

br35h: $(BIN)/fesf  ## build surrogates for ../shared/data/br35h at 64 px (CPU-friendly, about 4 min on 2 cores)
	$(BIN)/fesf surrogates --config configs/br35h.yaml --image-size 64

audit: $(BIN)/fesf  ## attack Br35H's surrogates at 64 px (fesf audit, about 25 min on 2 cores): ~/.fesf/audits/br35h/privacy.md
	$(BIN)/fesf audit --config configs/br35h.yaml --image-size 64

loopback: $(BIN)/fesf  ## rehearse a TLS-secured, authenticated deployment of two sites on 127.0.0.1
	PATH="$(abspath $(BIN)):$$PATH" deploy/loopback.sh

# The browser tests drive Debian's Chromium: Playwright never downloads a browser.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	@echo "installing Debian's chromium for the dashboard's browser tests"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

results: $(BIN)/fesf  ## the paper's Tables 1-3 on ../shared/data, federated and central: regenerates docs/results.md (about 3 h of cells on 2 CPU cores; finished cells are kept)
	$(BIN)/fesf-reproduce suite configs/results.yaml

test: $(BIN)/fesf $(CHROMIUM)  ## lint, format and type checks, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

test-faults: $(BIN)/fesf  ## the fault-injection tests: Flower processes killed mid-run (about 3 min; CI runs it after make test)
	$(BIN)/pytest -q -m faults

benchmark: $(BIN)/fesf  ## IHM, pipeline, IQEM, federated and deployed round speed, the demo's time and scores (see docs/benchmarks.md)
	$(BIN)/python benchmarks/ihm.py
	$(BIN)/python benchmarks/demo.py
	PYTHONPATH=. $(BIN)/python benchmarks/federated.py
	PYTHONPATH=. $(BIN)/python benchmarks/deployment.py
