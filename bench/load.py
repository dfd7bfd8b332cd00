"""Closed-loop load on loopback: ``clients`` workers each send, await, repeat, for a bounded time.

``--protocol v1`` (default) POSTs each image's bytes to ``--url``; ``v2`` POSTs it as the Open
Inference Protocol's binary request (one image, Triton's binary tensor data, the top 5 through
the classification extension, answered in binary: what a tritonclient user sends) to
``--url`` = ``.../v2/models/<m>/infer``; ``grpc`` sends the same request as ``ModelInfer`` to
``--url`` = ``host:port``.

Run as its own process (``python -m bench.load ...``) so the client does not share the server's
interpreter; prints one JSON line: requests, errors, req/s, p50/p99 latency in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from pathlib import Path

import aiohttp
import numpy as np

V2_OUTPUTS = [{"name": "probabilities", "parameters": {"classification": 5, "binary_data": True}}]


def v2_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """One image as tritonclient.http sends it: JSON header, then the BYTES element (4-byte LE length + bytes)."""
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(image) + 4}}],
         "outputs": V2_OUTPUTS}
    ).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    return header + struct.pack("<I", len(image)) + image, headers


async def closed_loop(
    url: str, bodies: list[bytes], clients: int, duration: float, warmup: float, protocol: str = "v1", model: str = "", application: str = ""
) -> dict:
    if protocol == "grpc":
        return await grpc_closed_loop(url, bodies, clients, duration, warmup, model, application)
    requests = [v2_request(b) if protocol == "v2" else (b, {"content-type": "image/jpeg"}) for b in bodies]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < stop_at:
                body, headers = requests[i % len(requests)]
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = -1
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    statuses[status] = statuses.get(status, 0) + 1
                i += clients

        await asyncio.gather(*(worker(c) for c in range(clients)))
    return _summary(latencies, statuses, 200, clients, duration)


async def grpc_closed_loop(
    address: str, bodies: list[bytes], clients: int, duration: float, warmup: float, model: str, application: str
) -> dict:
    """``ModelInfer`` with pre-serialised requests over one channel (as tritonclient.grpc does);
    ``application`` is Serve's routing key, needed when more than one application runs."""
    import grpc

    from deployments.v2.open_inference_grpc_pb2 import ModelInferRequest

    def serialized(image: bytes) -> bytes:
        request = ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.outputs.add(name="probabilities").parameters["classification"].int64_param = 5
        request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
        return request.SerializeToString()

    requests = [serialized(b) for b in bodies]
    metadata = (("application", application),) if application else None
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < stop_at:
                try:
                    await infer(requests[i % len(requests)], timeout=60, metadata=metadata)
                    status = "OK"
                except grpc.aio.AioRpcError as exc:
                    status = exc.code().name
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    statuses[status] = statuses.get(status, 0) + 1
                i += clients

        await asyncio.gather(*(worker(c) for c in range(clients)))
    return _summary(latencies, statuses, "OK", clients, duration)


def _summary(latencies: list[float], statuses: dict, ok_status, clients: int, duration: float) -> dict:
    ok = statuses.get(ok_status, 0)
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "clients": clients, "requests": len(latencies), "ok": ok, "errors": len(latencies) - ok,
        "req_s": round(ok / duration, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--files", required=True, help="a directory of images to cycle through")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--protocol", choices=("v1", "v2", "grpc"), default="v1")
    parser.add_argument("--model", default="efficientnet_lite0", help="grpc: the model to call")
    parser.add_argument("--application", default="", help="grpc: Serve's application name (when several run)")
    args = parser.parse_args()
    bodies = [p.read_bytes() for p in sorted(Path(args.files).rglob("*.jpg"))[:512]]
    result = closed_loop(args.url, bodies, args.clients, args.duration, args.warmup, args.protocol, args.model, args.application)
    print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    main()
