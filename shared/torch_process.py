"""torch's process-wide state, in one place: every switch that is the process's, not one model's.

Serve replicas and Ray Data actors each own their process, so a setting made here for one
model holds for every model that process builds; each function is safe to call again.

- ``SERVING``: batches share it, a warm-up (which compiles) takes it alone (``shared.rwlock``).
- ``COMPILED_CALLS``: held around every call of a compiled model. Dynamo's guard check and
  recompile path keep global state: two threads in the same compiled frame at once can see a
  half-updated cache, fail their guards and hit ``fail_on_recompile`` (or worse). Eager calls
  never take it.
- compiling: inductor freezing, dynamo's graph limit raised to what the process warms, and
  ``fail_on_recompile`` once warm, so a new shape is an error, never a silent compile.
- ``cpu_threads``, ``cudnn_benchmark``: torch's intra-op threads and cuDNN autotune.
- ``shared.device_decode``'s ``CUDA_DECODE_LOCK`` is process-wide too; it lives with nvJPEG's reasons.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from shared.rwlock import ReadWriteLock

SERVING = ReadWriteLock()
COMPILED_CALLS = threading.Lock()
COMPILE_BACKEND = "inductor"  # tests swap in a cheaper backend; dynamo's rules are the same
GRAPH_MARGIN = 4
_COMPILED_GRAPHS = [0]  # graphs warmed in this process, all compiled models together


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile for inference: static shapes (batches are padded to warmed sizes) and
    inductor freezing (weights become constants, so conv+BN fold and layouts are chosen once)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, dynamic=False, backend=COMPILE_BACKEND)


def allow_compiled_graphs(new: int) -> None:
    """Raise dynamo's per-frame graph limit to what this process warms, and make hitting it an
    error. Past ``recompile_limit`` (8 by default) dynamo stops compiling a frame and runs it
    eagerly, with only a log line: a 9th batch size would silently run uncompiled. The limit is
    per code object, and every model instance of a class shares its code, so the count is the
    process's, not one model's."""
    import torch._dynamo.config as dynamo_config

    _COMPILED_GRAPHS[0] += new
    wanted = _COMPILED_GRAPHS[0] + GRAPH_MARGIN
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), wanted))
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, wanted)
    dynamo_config.fail_on_recompile_limit_hit = True


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Compiling allowed inside (a warm-up), whatever the stance outside."""
    with torch.compiler.set_stance("default"):
        yield


def forbid_recompiles() -> None:
    """From here on a shape no warm-up compiled is an error, never a compile on a request thread."""
    torch.compiler.set_stance("fail_on_recompile")


def compiled_call(compiled: bool):
    """The context a model call runs in: ``COMPILED_CALLS`` for a compiled model, nothing for an eager one."""
    return COMPILED_CALLS if compiled else contextlib.nullcontext()


def cpu_threads(threads: int) -> None:
    """torch's intra-op threads on a CPU (left alone, they are what Ray set from the reservation)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def cudnn_benchmark() -> None:
    """cuDNN autotune on (``auto.settle`` decides for which models)."""
    torch.backends.cudnn.benchmark = True
