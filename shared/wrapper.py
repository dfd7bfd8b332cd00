"""The one model wrapper both paths use: decode -> prepare -> predict -> postprocess.

Each stage is a pure step usable alone:
- ``decode(bytes) -> uint8 HWC``           CPU, per image, raises typed errors
- ``prepare(uint8 HWC) -> Prepared``       CPU, per image, uint8 CHW at the model's size
- ``predict(list[Prepared]) -> raw``        device: uint8 -> device -> normalise -> model
- ``postprocess(raw, ...) -> list[result]`` plain Python dicts, one per image

With ``decode.on_device``, ``load`` checks a JPEG's header and returns it still ``Encoded``; the
device half decodes those in one batched nvJPEG call (``shared.device_decode``) before ``predict``.

``load`` = decode + prepare (the CPU half, run on CPU workers) and ``predict_batch`` = predict +
postprocess (the device half, run in the GPU replica / actor). The Serve deployment and the Ray
Data actor call exactly these, so the same image gets the same answer online and offline.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from typing import Any, Sequence

import numpy as np
import torch

from shared import auto, device_decode
from shared.config import ModelConfig
from shared.decode import decode_image, decode_opened, open_image
from shared.device_decode import (
    CUDA_DECODE_LOCK,
    Encoded,
    blank_jpeg,
    decode_jpegs,
    encoded_if_device_decodable,
    pixel_budget_chunks,
)
from shared.devices import ray_assigned_gpus, resolve_device
from shared.errors import InvalidImage, TwinferError
from shared.memory import RELEASE_FROM_PIXELS, release_freed_memory
from shared.prepare import Prepared, prepare_image, prepare_tensor, stack
from shared.registry import ModelSpec
from shared.rwlock import ReadWriteLock
from shared.tasks import DEFAULT_TOP_K, Task

logger = logging.getLogger(__name__)


Item = Prepared | Encoded  # what the CPU half hands the device half
# batches share it, warm-ups (which compile) take it alone: one per process, as dynamo's state is
SERVING = ReadWriteLock()


class ImageLoader:
    """The CPU half: bytes -> Item (``Prepared``, or ``Encoded`` with ``decode.on_device``). Cheap
    to build (no model), so every CPU worker has one."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.spec: ModelSpec = config.spec
        self.task: Task = config.make_task()
        self._formats = frozenset(config.decode.formats)
        self._draft = self.spec.preprocess.draft_size if config.decode.draft else None  # None for detection
        decode = config.decode
        # every check open_image makes, on both paths: sizes, formats and decode work
        self._limits = dict(
            max_pixels=decode.max_pixels,
            formats=self._formats,
            max_bytes=decode.max_bytes,
            max_jpeg_scans=decode.max_jpeg_scans,
            max_jpeg_scan_pixels=decode.max_jpeg_scan_pixels,
        )

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, draft_size=self._draft, **self._limits)

    def prepare(self, image: np.ndarray) -> Prepared:
        return prepare_image(image, self.spec.preprocess)

    def load(self, data: bytes) -> Item:
        """Every check, then the pixels at the model's size; with ``decode.on_device`` a JPEG the
        device can decode comes back ``Encoded`` after the header checks alone."""
        image = open_image(data, **self._limits)  # the header checks: nothing decoded yet
        large = image.width * image.height >= RELEASE_FROM_PIXELS
        try:
            if self.config.decode.on_device:
                encoded = encoded_if_device_decodable(image, data)
                if encoded is not None:
                    return encoded
            return self.prepare(decode_opened(image, draft_size=self._draft))
        finally:
            if large:
                image = None  # the full-size pixels go now, then what malloc kept of them
                release_freed_memory()


class ModelWrapper(ImageLoader):
    """The whole model: CPU half (inherited) plus the device half."""

    def __init__(self, config: ModelConfig, batch_sizes: Sequence[int] = (1,)):
        """``batch_sizes``: warmed here (with ``compile``, and on CUDA, the only sizes batches are
        run at until ``warmup`` adds more). The Serve replica passes none and warms in ``reconfigure``."""
        super().__init__(config)
        self.labels = self.task.labels
        self.device = resolve_device(config.device, ray_assigned_gpus())
        if config.decode.on_device and self.device.type == "cuda":
            device_decode.DECODING_ON_DEVICE.set()  # from now on every CUDA batch here takes the lock
        self.dtype = _resolve_dtype(config.precision, self.device)
        if not self.task.fixed_size:
            self.dtype = torch.float32  # torchvision's detection heads are fp32 code
        model = self.task.adapt_model(self.spec.build(config.weights, config.options).eval(), self.spec.embed_head)
        self.output_dim = self.task.output_dim(model)
        model = model.to(self.device, dtype=self.dtype)
        if isinstance(config.cpu_threads, int) and self.device.type == "cpu":
            torch.set_num_threads(config.cpu_threads)  # auto: what Ray set from the reservation (OMP_NUM_THREADS)
        # channels_last pays on CPU too for the embedded model (bench/RESULTS.md)
        self.channels_last = config.channels_last and self.task.fixed_size
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda" and self.task.fixed_size and config.cudnn_benchmark:
            # autotuned per input shape, so only ever at the warmed (padded-to) batch sizes, at start-up;
            # detection inputs vary in size and would autotune on user requests
            torch.backends.cudnn.benchmark = True
        self.compiled = (
            config.compile if isinstance(config.compile, bool) else auto.compiles(self.task, self.device.type)
        )
        self.model = _compile(model) if self.compiled else model
        # batch sizes run once before any request
        self.warmed_batch_sizes: tuple[int, ...] = ()
        pre = self.spec.preprocess
        std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift, done in one fused pass on the device
        self._scale = (1.0 / (255.0 * std)).to(self.dtype)
        self._shift = (-mean / std).to(self.dtype)
        self.warmup(batch_sizes)

    # ---- device half -------------------------------------------------------------------------
    @property
    def pads_batches(self) -> bool:
        """Compiled graphs are static and cuDNN autotunes per shape: such batches are zero-padded
        (or split) to the warmed sizes, so neither a compile nor an autotune lands on a request."""
        return self.task.fixed_size and (self.compiled or self.device.type == "cuda")

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        """Run dummy batches of these sizes, so compilation and cuDNN autotune never land on a user
        request. Batches are padded up to the nearest warmed size (and split at the largest) when
        ``pads_batches``. Safe while batches run on other threads: it waits for them, and new
        batches wait for it (``SERVING``), because torch.compile is not thread-safe."""
        size = self.spec.preprocess.size
        dummy = Prepared(np.zeros((3, size, size), np.uint8), (size, size))
        with SERVING.exclusive():
            new = sorted(set(batch_sizes) - set(self.warmed_batch_sizes))
            if self.compiled:
                _allow_compiled_graphs(len(new))
            # eager on CPU has nothing to warm (no compile, no CUDA context or cuDNN autotune)
            for n in new if (self.compiled or self.device.type == "cuda") else ():
                # at exactly size n, not padded to a size warmed before; through the device
                # decoder when it is on, so its first (slow) call is here too
                items = [blank_jpeg(size)] * n if self.config.decode.on_device else [dummy] * n
                with torch.compiler.set_stance("default"):  # compiling is the point here
                    if self.task.fixed_size:
                        images = self.decode_on_device(items)
                        with self._exclusive_device(items):
                            self._forward(self._batch_on_device([image.pixels for image in images]))
                    else:
                        with self._exclusive_device(items):
                            self.predict(items)
            self.warmed_batch_sizes = tuple(sorted({*self.warmed_batch_sizes, *new}))
            if self.compiled:
                # from here on a new shape is an error, never a silent compile on a request thread
                torch.compiler.set_stance("fail_on_recompile")

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on the device -> the model's output on the device, at exactly this batch size."""
        x = torch.addcmul(self._shift, x.to(self.dtype), self._scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``_forward`` at the warmed sizes: pad to the nearest one, split above the largest."""
        sizes = self.warmed_batch_sizes
        if not sizes:  # never compile (or autotune) on a user request
            raise RuntimeError("model has no warmed batch size: call warmup(batch_sizes) before predicting")
        outputs = []
        for chunk in x.split(sizes[-1]):
            n = len(chunk)
            padded = sizes[bisect.bisect_left(sizes, n)]
            if padded > n:
                chunk = torch.cat([chunk, chunk.new_zeros((padded - n, *chunk.shape[1:]))])
            outputs.append(self._forward(chunk)[:n])
        return torch.cat(outputs)

    def _batch_on_device(self, pixels: list[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Same-size uint8 CHW images -> one uint8 NCHW tensor on the device. Host arrays cross
        in one non-blocking copy from a pinned buffer they were stacked into; images already on
        the device (decoded there) join it there."""
        on_device = [i for i, p in enumerate(pixels) if isinstance(p, torch.Tensor)]
        if not on_device:
            return self._stack_to_device(pixels)
        batch = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, device=self.device)
        host = [i for i, p in enumerate(pixels) if not isinstance(p, torch.Tensor)]
        if host:
            batch[host] = self._stack_to_device([pixels[i] for i in host])
        batch[on_device] = torch.stack([pixels[i] for i in on_device])
        return batch

    def _stack_to_device(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(stack(list(pixels)))
        # stacked straight into page-locked memory: one host copy, then an asynchronous upload. The
        # caching host allocator reuses the buffer only once the copy's recorded event has passed.
        host = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, pin_memory=True)
        np.stack(pixels, out=host.numpy())
        return host.to(self.device, non_blocking=True)

    def _image_to_device(self, pixels: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _exclusive_device(self, items: Sequence[Item]):
        """``CUDA_DECODE_LOCK`` for a CUDA batch once nvJPEG may run in this process (or when the
        batch itself has JPEGs to decode): nvJPEG must not run while another thread has work
        queued on the device, even a batch decoded on the CPU (``shared.device_decode``)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if device_decode.DECODING_ON_DEVICE.is_set() or any(isinstance(item, Encoded) for item in items):
            return CUDA_DECODE_LOCK
        return contextlib.nullcontext()

    def decode_on_device(self, items: Sequence[Item]) -> list[Prepared | TwinferError]:
        """``Encoded`` JPEGs -> ``Prepared`` with pixels on the device (batched decodes, at most
        ``MAX_PIXELS_PER_DECODE`` full-size pixels at a time, under ``_exclusive_device``). A JPEG
        the device rejects, or cannot resize, goes through the CPU path alone, after the device
        lock is released (a full-size CPU decode must not stall the GPU); only if that fails too is
        it an error, for that image only. ``Prepared`` items pass through."""
        encoded = [i for i, item in enumerate(items) if isinstance(item, Encoded)]
        out: list[Prepared | TwinferError] = list(items)  # type: ignore[arg-type]
        if not encoded:
            return out
        failed: dict[int, TwinferError] = {}
        with self._exclusive_device(items):
            for chunk in pixel_budget_chunks([items[i] for i in encoded]):
                indices = [encoded[j] for j in chunk]
                for i, decoded in zip(indices, decode_jpegs([items[i] for i in indices], self.device)):
                    prepared = self._prepare_decoded(items[i], decoded)
                    if isinstance(prepared, Prepared):
                        out[i] = prepared
                    else:
                        failed[i] = prepared
        for i, reason in failed.items():
            out[i] = self._decode_on_cpu(items[i], reason)
        return out

    def _prepare_decoded(self, item: Encoded, decoded: torch.Tensor | TwinferError) -> Prepared | TwinferError:
        if isinstance(decoded, TwinferError):
            return decoded
        try:
            return Prepared(prepare_tensor(decoded, self.spec.preprocess), item.original_size)
        except RuntimeError as exc:  # e.g. out of device memory resizing a very large image
            return TwinferError(f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _decode_on_cpu(self, item: Encoded, reason: TwinferError) -> Prepared | TwinferError:
        logger.warning("device JPEG decode or resize failed (%s); decoding this image on the CPU", reason)
        try:
            return self.prepare(self.decode(item.data.tobytes()))
        except TwinferError as error:
            return error
        except Exception as exc:  # anything else still costs this image only
            logger.exception("unexpected error decoding an image on the CPU fallback")
            return InvalidImage(f"{type(exc).__name__}: {exc}")

    def _run(self, items: Sequence[Prepared]) -> Any:
        """uint8 images -> the model's output on the device (one batch tensor, or per-image dicts
        for a model that takes images of any size)."""
        if self.task.fixed_size:
            x = self._batch_on_device([item.pixels for item in items])
            return self._forward_padded(x) if self.pads_batches else self._forward(x)
        return self.model([self._image_to_device(item.pixels).to(self.dtype).div_(255.0) for item in items])

    @torch.inference_mode()
    def predict(self, items: Sequence[Prepared]) -> Any:
        """uint8 images -> the model's whole output on the host: class probabilities, embeddings,
        or detection dicts (benchmarks and agreement checks; requests use ``predict_batch``)."""
        if not items:
            return [] if not self.task.fixed_size else torch.zeros((0, self.output_dim or len(self.labels)))
        return self.task.full(self._run(items))

    @torch.inference_mode()
    def _predict_reduced(self, items: Sequence[Prepared], params: Sequence[dict]) -> Any:
        """The model's output reduced on the device to what the answers need (e.g. only the top k)."""
        if not items:
            return self.predict(items)
        return self.task.reduce(self._run(items), params)

    def postprocess(self, raw: Any, items: Sequence[Prepared], params: Sequence[dict]) -> list:
        return self.task.answers(raw, items, params)

    def predict_batch(
        self, items: Sequence[Item], params: Sequence[dict] | None = None
    ) -> list[list[dict] | TwinferError]:
        """The device half for a batch; ``params[i]`` holds request i's top_k / score_threshold.
        Result i is image i's predictions, or the ``TwinferError`` of an ``Encoded`` image that
        turned out undecodable (the only way one image can fail here; its neighbours still run)."""
        params = list(params) if params is not None else [{}] * len(items)
        if len(params) != len(items):
            raise ValueError(f"{len(items)} items but {len(params)} parameter sets")
        with SERVING.shared():
            ready = self.decode_on_device(items)
            good = [i for i, item in enumerate(ready) if isinstance(item, Prepared)]
            good_items = [ready[i] for i in good]
            good_params = [params[i] for i in good]
            with self._exclusive_device(items):
                raw = self._predict_reduced(good_items, good_params)  # ends on the host: nothing left queued
        results: list = [item if isinstance(item, TwinferError) else None for item in ready]
        predictions = self.postprocess(raw, good_items, good_params)
        if len(predictions) != len(good):
            raise RuntimeError(f"postprocess returned {len(predictions)} results for {len(good)} images")
        for i, prediction in zip(good, predictions):
            results[i] = prediction
        return results

    def classify_bytes(self, data: bytes, top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """Convenience for one image, used by the demo and parity checks."""
        (result,) = self.predict_batch([self.load(data)], [{"top_k": top_k}])
        if isinstance(result, TwinferError):
            raise result
        return result

    def check_device(self) -> None:
        """Raise if the model's device no longer works. A sticky CUDA error (an illegal address, an
        Xid) poisons the context: every later call fails, so the replica must be replaced. Runs a
        tiny op and waits for it, taking the device lock like any batch would."""
        with self._exclusive_device(()):
            _device_probe(self.device)


def planned_output_dim(config: ModelConfig) -> int | None:
    """The width of each answer vector (embeddings) without loading weights or touching a device:
    the architecture is built on torch's meta device, where tensors have shapes but no data."""
    task = config.make_task(labels=())
    if not task.vector_output:
        return None
    with torch.device("meta"):
        return task.output_dim(task.adapt_model(config.spec.build("random", config.options), config.spec.embed_head))


COMPILE_BACKEND = "inductor"  # tests swap in a cheaper backend; dynamo's rules are the same
_COMPILED_GRAPHS = [0]  # graphs warmed in this process, all compiled models together
GRAPH_MARGIN = 4


def _compile(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile for inference: static shapes (the wrapper pads batches to warmed sizes) and
    inductor freezing (weights become constants, so conv+BN fold and layouts are chosen once).
    Freezing is a process-wide inductor setting; replicas and actors own their process."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, dynamic=False, backend=COMPILE_BACKEND)


def _allow_compiled_graphs(new: int) -> None:
    """Raise dynamo's per-frame graph limit to what this process warms, and make hitting it an
    error. Past ``recompile_limit`` (8 by default) dynamo stops compiling a frame and runs it
    eagerly, with only a log line: a 9th batch size would silently run uncompiled. The limit is
    per code object, and every model instance of a class shares its code, so the count is the
    process's, not this model's."""
    import torch._dynamo.config as dynamo_config

    _COMPILED_GRAPHS[0] += new
    wanted = _COMPILED_GRAPHS[0] + GRAPH_MARGIN
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), wanted))
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, wanted)
    dynamo_config.fail_on_recompile_limit_hit = True


def _device_probe(device: torch.device) -> None:
    """A tiny op on ``device``, waited for; raises if the device is broken."""
    value = torch.ones(4, device=device).add_(1).sum()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if value.item() != 8.0:
        raise RuntimeError(f"device {device} computed 4 x (1 + 1) = {value.item()}")


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes to warm for a batcher that may send 1..max_batch_size: powers of two, and the max."""
    return tuple(
        sorted({1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size} | {max_batch_size})
    )


def _resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if device.type != "cuda" and precision == "fp16":
        raise RuntimeError("precision fp16 needs a CUDA device; this process has none (bf16 runs on CPU)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
