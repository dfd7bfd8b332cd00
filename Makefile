# Two entry points on a fresh machine (README quickstart): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo lint test test-fast bench bench-gpu clean v2-stubs

# uv resolves the ~100 packages below and downloads and unpacks them in parallel (pip unpacks one
# wheel at a time: torch's CUDA libraries alone are 4 GB). It reads its own settings (UV_INDEX_URL,
# UV_EXTRA_INDEX_URL; https://docs.astral.sh/uv/), not pip's. constraints.txt pins torch;
# overrides.txt says which protobuf and grpcio-reflection go in, whatever a package declares.
# compileall then compiles the bytecode on every core (a file that does not compile is skipped, as
# pip skips it). Compiled files matter where PYTHONDONTWRITEBYTECODE is set: each process would
# otherwise compile every module it imports.
$(STAMP): pyproject.toml constraints.txt overrides.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q 'uv>=0.13,<0.14'
	$(BIN)/uv pip install --python $(BIN)/python -q -c constraints.txt --override overrides.txt -e '.[demo,test]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

# The page's browser tests (tests/test_ui_browser.py) drive the system Chromium with Playwright; no
# browser is downloaded. When it is missing, this installs Debian's chromium with apt (as root, or
# with passwordless sudo). If that is impossible the browser tests skip, saying why, unless
# TWINFER_REQUIRE_BROWSER is set (.ci/run sets it): then this step fails the run.
CHROMIUM ?= $(or $(TWINFER_CHROMIUM),/usr/bin/chromium)
APT := env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0

browser:
	@if [ ! -x "$(CHROMIUM)" ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then as=""; elif sudo -n true 2>/dev/null; then as="sudo -n"; else as=none; fi; \
	  if [ "$$as" != none ]; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    $$as $(APT) update && $$as $(APT) install --no-install-recommends chromium fonts-liberation; \
	  fi; \
	fi; \
	if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ -n "$$TWINFER_REQUIRE_BROWSER" ]; then \
	  echo "error: no Chromium at $(CHROMIUM) and it could not be installed (apt-get install chromium); TWINFER_REQUIRE_BROWSER is set" >&2; \
	  exit 1; \
	fi; \
	echo "warning: no Chromium at $(CHROMIUM): the browser tests will be skipped (apt-get install chromium)" >&2

demo: $(STAMP)
	$(BIN)/twinfer demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Whole test files run in TEST_WORKERS processes at once (pytest-xdist), each with its own Ray:
# on 2 cores, Ray's and the servers' start-up waits of one overlap with the other's work. Which
# worker takes what, in which order: tests/scheduling.py.
TEST_WORKERS ?= 2
test: $(STAMP) browser lint
	TWINFER_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The edit loop: no Ray, no other process (tests/conftest.py keeps the tiers honest); `make test`
# runs everything, as CI does.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not ray and not process and not slow"

# twinfer as a user runs it (every setting at its default) against the seeds' pipeline and a docs-style deployment
bench: $(STAMP)
	$(BIN)/python -m bench.run --n 2000 --clients 1,16

# the GPU matrix (refuses without CUDA): bench/gpu.py's docstring has the commands for 10-minute slots
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu

# The Open Inference Protocol's gRPC stubs (checked in; deployments/v2/__init__.py). grpcio-tools
# 1.76.0 makes code that runs on protobuf >= 6.31.1 and grpcio >= 1.76 (pyproject's floors); it is
# installed in a venv of its own so that it changes nothing in $(VENV).
v2-stubs:
	$(PYTHON) -m venv .venv-protoc
	.venv-protoc/bin/pip install -q grpcio-tools==1.76.0
	.venv-protoc/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		deployments/v2/open_inference_grpc.proto

clean:
	rm -rf $(VENV) .venv-protoc build *.egg-info
