"""The Open Inference Protocol (KServe "v2", spoken by Triton, KServe, Seldon MLServer, OpenVINO
Model Server) over HTTP (``/v2/...``) and gRPC (``inference.GRPCInferenceService``).

``open_inference_grpc.proto`` is the protocol's gRPC definition, copied unchanged from
kserve/open-inference-protocol (its header names the commit). ``open_inference_grpc_pb2.py``,
``open_inference_grpc_pb2.pyi`` and ``open_inference_grpc_pb2_grpc.py`` are generated from it and
checked in; ``make v2-stubs`` regenerates them with grpcio-tools 1.76.0 in a separate venv:

    python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \\
        deployments/v2/open_inference_grpc.proto

That grpcio-tools bundles protoc 31.1, whose code runs on protobuf >= 6.31.1 (7.x included) and
grpcio >= 1.76: the floors in pyproject.toml. Import the generated modules only where they are
needed (``grpc_service.messages()``): tritonclient's stubs define the same ``inference.*``
messages, and protobuf refuses both in one process.
"""
