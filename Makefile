# Two entry points on a fresh machine (README quickstart): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean v2-stubs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[demo,test]'
	# tritonclient[grpc] (test extra) declares protobuf<7, so the resolver above settles on protobuf 6
	# and an older grpcio-reflection. What is tested is protobuf 7 (grpcio-reflection >= 1.85, which
	# Serve imports, needs >= 7.35.1); both tritonclient clients work on it. pip warns of the conflict.
	$(BIN)/pip install -q -c constraints.txt 'protobuf>=7.35.1,<8'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/twinfer demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.run --n 2000 --precision fp32 --compile --batch-size 4 --online-batch 4

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
