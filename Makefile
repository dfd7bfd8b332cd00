# Two entry points on a fresh machine (README quickstart): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo lint test test-fast bench bench-gpu clean v2-stubs

# pip 26 resolves the ~100 packages below far faster than the pip a new venv has. pip compiles
# each file it installs to bytecode, one at a time; here compileall does it on every core instead,
# torch's files while the second pip waits on the network, the rest at the end (a file that does
# not compile is skipped, as pip skips it). Compiled files matter where PYTHONDONTWRITEBYTECODE is
# set: each process would otherwise compile every module it imports.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade 'pip>=26'
	$(BIN)/pip install -q --no-compile -c constraints.txt torch torchvision
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python*/site-packages/torch* > /dev/null 2>&1 & compiling=$$!; \
	$(BIN)/pip install -q --no-compile -c constraints.txt -e '.[demo,test]'; installed=$$?; \
	wait $$compiling; exit $$installed
	# tritonclient[grpc] (test extra) declares protobuf<7, so the resolver above settles on protobuf 6
	# and an older grpcio-reflection. What is tested is protobuf 7 with grpcio-reflection >= 1.85 (which
	# Serve imports; it needs protobuf >= 7.35.1); both tritonclient clients work on it. pip may warn
	# that tritonclient's grpc extra asked for protobuf<7.
	$(BIN)/pip install -q --no-compile -c constraints.txt 'protobuf>=7.35.1,<8' 'grpcio-reflection>=1.85'
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
