"""``serve run serve_config.yaml`` in Serve's throughput-optimised mode (README's fast form), where
handle calls travel over gRPC capped at 4 MiB by default and the ingress replicas serve HTTP and
gRPC themselves: a detector's window of large images reaches the model, and a gRPC message over
the body cap is refused by the transport. A process of its own, started as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from twinfer.ports import free_loopback_port
from twinfer.processes import with_default_sigint
from twinfer.samples import encode, sample_array

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = "fasterrcnn_v2"


def config(port: int, grpc_port: int) -> dict:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    config["grpc_options"]["port"] = grpc_port
    (app,) = config["applications"]
    app["args"]["ingress"].update(num_cpus=0.25, decode_threads=2)
    classifier = app["args"]["models"][0]
    classifier.update(num_cpus=0.25)
    classifier["model"].update(weights="random", compile=False)
    detector = next(m for m in app["args"]["models"] if m["model"]["name"] == DETECTOR)
    # random weights, resized small inside the model (cheap on a CPU); what crosses to it is still
    # the image at the preprocessing's 1333 pixels: 5.3 MB, over the 4 MiB gRPC default
    detector.update(enabled=True, num_gpus=0, num_cpus=0.25)
    detector["model"].update(weights="random", options={"min_size": 200, "max_size": 333})
    return config


@pytest.mark.timeout(420)
def test_throughput_mode_carries_a_detectors_large_images_and_bounds_grpc_messages(tmp_path):
    port, grpc_port = free_loopback_port(), free_loopback_port()
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config(port, grpc_port)))
    limit = int(
        yaml.safe_load(path.read_text())["controller_options"]["runtime_env"]["env_vars"][
            "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
        ]
    )
    # In this mode an ingress replica serves HTTP itself, and Serve keeps a stopping one up for
    # RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s) so that a load balancer in front sees
    # it go: here nothing is in front, so Ctrl-C stops the server at once.
    env = dict(
        os.environ,
        RAY_ADDRESS="local",
        RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
        RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="0",
    )
    log = tmp_path / "serve-run.log"
    process = subprocess.Popen(
        with_default_sigint([str(Path(sys.executable).parent / "serve"), "run", str(path)]),
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 300
            while True:
                assert process.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "serve run never became healthy:\n" + log.read_text()[-3000:]
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            # a 1600 x 1600 photo crosses to the detector at 1333 x 1333: 5.3 MB, over gRPC's 4 MiB default
            photo = encode(np.asarray(Image.fromarray(sample_array("astronaut")).resize((1600, 1600))))
            detected = client.post(
                f"/v1/models/{DETECTOR}/detect",
                params={"score_threshold": 0.0},
                content=photo,
                headers={"content-type": "image/jpeg"},
            )
            assert detected.status_code == 200, detected.text
            assert isinstance(detected.json()["detections"], list)
            classified = client.post(
                "/v1/models/efficientnet_lite0/classify", content=photo, headers={"content-type": "image/jpeg"}
            )
            assert classified.status_code == 200 and len(classified.json()["predictions"]) == 5

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as triton:
            image = grpcclient.InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([photo], dtype=np.object_))
            boxes = triton.infer(DETECTOR, [image]).as_numpy("boxes")
            assert boxes.ndim == 2 and boxes.shape[1] == 4
            oversized = grpcclient.InferInput("image", [1], "BYTES")
            oversized.set_data_from_numpy(np.array([b"\xff" * (limit + 1)], dtype=np.object_))
            with pytest.raises(InferenceServerException) as refused:
                triton.infer("efficientnet_lite0", [oversized])
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
