# The two commands a fresh machine needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REPOSITORY ?= models
RUNS ?= runs
MODEL ?= digits
HOST ?= 0.0.0.0
PORT ?= 8001
PROTO_OUT := $(VENV)/proto-gen

.PHONY: serve test proto lint bench perf-analyzer container-test clean

# A stamp per extra set: re-install only when pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[server,training]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-serve

# Train and export the default model only when the repository has none.
# A finished run already in $(RUNS)/ is exported, not trained again (train never overwrites it).
$(REPOSITORY)/$(MODEL): | $(VENV)/.installed-serve
	test -f $(RUNS)/$(MODEL)/checkpoint.pt || \
		$(BIN)/bnserve train --model cnn --dataset digits --run-dir $(RUNS)/$(MODEL)
	$(BIN)/bnserve export --run-dir $(RUNS)/$(MODEL) --repository $(REPOSITORY) --name $(MODEL)

serve: $(VENV)/.installed-serve $(REPOSITORY)/$(MODEL)
	$(BIN)/bnserve serve --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# Regenerate the protocol stubs with the grpcio-tools of the thin client's floor environment
# (scripts/floor_env.py builds it in $(VENV)/floor); tests/proto checks the committed ones
# are current.
proto: | $(BIN)/python
	FLOOR_PYTHON=$$($(BIN)/python scripts/floor_env.py) && $$FLOOR_PYTHON -m bnserve.proto.generate

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# The serving benchmark (bench/serving.py, ~12 min; results in bench/results/serving.*), not
# part of `make test`. BENCH_ARGS=--quick for ~1 s a scenario, BENCH_ARGS=--pin to put the
# server and the load generator on separate cores.
BENCH_ARGS ?=
bench: $(VENV)/.installed-dev
	$(BIN)/python bench/serving.py $(BENCH_ARGS)

# Triton's perf_analyzer against bnserve; it needs Debian's libb64-0d (apt-get install libb64-0d).
perf-analyzer: $(VENV)/.installed-dev
	$(BIN)/pip install -q nvidia-cuda-runtime-cu12
	$(BIN)/python bench/perf_analyzer.py --repository $(REPOSITORY) --model $(MODEL)

# Build the image with buildah and run it with podman: BNSERVE_PORT, the HEALTHCHECK, an
# inference and SIGTERM (docs/container.md). Not part of `make test`: it needs buildah and
# podman (it installs nothing and says how when they are missing) and root.
container-test: $(VENV)/.installed-serve
	$(BIN)/python scripts/container_test.py

clean:
	rm -rf $(VENV) $(RUNS) build *.egg-info
