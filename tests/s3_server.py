"""A real S3 endpoint for tests: ``moto_server`` on a free loopback port (no mocked calls).

tests/conftest.py registers this module as a plugin: a test asks for the session fixture
``s3_server`` by name (one server per test process; each test uses buckets of its own). It yields
an ``S3Server`` with the endpoint and a ready pyarrow filesystem, and stops the server at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from twinfer.ports import free_loopback_port

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port
    log: Path | None = None  # moto_server's request log: one line per request ("GET /bucket/key ...")

    @property
    def options(self) -> dict:
        """Settings for ``batch.uris.S3Options``."""
        return {
            "endpoint_override": self.endpoint,
            "scheme": "http",
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
        }

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(**self.options, allow_bucket_creation=True)

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def put(self, path: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(path) as stream:
            stream.write(data)

    def requests(self, method: str, prefix: str) -> list[str]:
        """The request lines so far whose method is ``method`` and whose path starts ``/prefix``."""
        wanted = f'"{method} /{prefix}'
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))  # moto colours non-2xx lines
        return [line for line in text.splitlines() if wanted in line]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    port = free_loopback_port()
    moto = Path(sys.executable).with_name("moto_server")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", process)
        yield S3Server(f"127.0.0.1:{port}", Path(log.name))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        log.close()


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto_server did not answer at {url} within {timeout} s")
