"""Message limits of the gRPC transports under Serve, set through Serve's own settings.

Two gRPC links can carry a request's images, and each has a limit Serve reads from an environment
variable when its process starts:

- **Clients to the gRPC ingress** (``inference.GRPCInferenceService``). Serve's default is 2 GiB
  (``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``): a client could make the proxy buffer that much before the
  ingress sees the message. twinfer's limit is ``grpc_message_limit(ingress.max_body_bytes)``, the
  body cap plus room for the protobuf framing, so an oversized message is ``RESOURCE_EXHAUSTED``
  from the transport, decided from its length prefix before it is buffered. Serve's proxies read it
  from the controller's environment: ``controller_options.runtime_env.env_vars`` in
  ``serve_config.yaml`` (a test keeps it equal to this function's value). With Serve's direct
  ingress (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) the ingress replicas serve gRPC themselves; the
  application sets the variable on them (``replica_env``).
- **The ingress to a model replica** (handle calls). In the default mode they travel as Ray actor
  calls, without a message limit. With ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` they travel over gRPC,
  which Serve caps at 4 MiB each way (``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``): one window of
  a detector's images (3 x 1333 x 1333 bytes each) is more. ``handle_message_limit`` is the largest
  call the application's models can get or answer, a window of their largest items; the
  application sets it on every replica it runs (``replica_env``).
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.config import ModelConfig

CLIENT_LIMIT_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
HANDLE_LIMIT_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
PROTOBUF_ROOM = 1 << 20  # field tags, 4-byte element lengths, names and parameters around the images
PICKLE_ROOM = 1 << 20  # what a call's arguments and answers take beyond their pixel and label bytes
ANSWER_BYTES = 256 * 1024  # one image's answer, at most: 1000 classes of {label, index, score} pickled
MAX_GRPC_MESSAGE = (1 << 31) - 1  # gRPC's own ceiling (a signed 32-bit length)


def grpc_message_limit(max_body_bytes: int) -> int:
    """The largest message a gRPC client may send the ingress: a body's worth of images and its framing."""
    return min(max_body_bytes + PROTOBUF_ROOM, MAX_GRPC_MESSAGE)


def item_bytes(model: ModelConfig) -> int:
    """The most bytes one image can take on its way to the model: pixels at the model's input size
    (the longest side, squared, for a model that keeps the aspect), or an encoded JPEG of up to
    ``decode.max_bytes`` when the model decodes on the device."""
    if model.decode.on_device:
        return model.decode.max_bytes
    side = model.spec.preprocess.size  # the crop's side, or the longest side (max_side)
    return 3 * side * side


def handle_message_limit(windows: Iterable[tuple[ModelConfig, int]]) -> int:
    """The largest model call (or its answer) of an application whose models get windows of these sizes."""
    largest = max((images * max(item_bytes(model), ANSWER_BYTES) for model, images in windows), default=0)
    return min(largest + PICKLE_ROOM, MAX_GRPC_MESSAGE)


def replica_env(max_body_bytes: int, windows: Iterable[tuple[ModelConfig, int]]) -> dict[str, str]:
    """The variables every replica of the application gets (see the module docstring)."""
    return {
        CLIENT_LIMIT_ENV: str(grpc_message_limit(max_body_bytes)),
        HANDLE_LIMIT_ENV: str(handle_message_limit(windows)),
    }
