"""A recognisable S3 secret through every failure path of the batch CLI and config: it never shows
in stdout, stderr, logs or exception text. URIs are echoed with their user-info redacted."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from batch.config import BackfillConfig
from batch.uris import S3Options, parse_uri, s3_filesystem_kwargs
from tests import images
from twinfer import cli

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzq-SECRET-TAIL"
PIECES = (SECRET, SECRET[:12], SECRET[-12:])
ROOT = Path(__file__).resolve().parent.parent


def assert_hidden(*texts: str) -> None:
    for text in texts:
        for piece in PIECES:
            assert piece not in text, f"secret fragment {piece!r} in:\n{text}"
        assert "input_value" not in text


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(images.small_jpeg("chelsea", 40))
    return tmp_path


def run_cli(argv: list[str], capsys, caplog) -> tuple[int, str]:
    with caplog.at_level(logging.DEBUG):
        code = cli.main(argv)
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert_hidden(everything)
    return code, captured.err


def test_backfill_flag_errors_never_print_the_secret(data, capsys, caplog):
    base = ["backfill", "--input", str(data / "in"), "--output", str(data / "out")]
    keys = ["--s3-access-key", "AKIAEXAMPLE", "--s3-secret-key", SECRET]
    cases = [
        (["--s3-secret-key", SECRET], "give both"),  # the case: pydantic quoted the input dict
        ([*keys, "--s3-anonymous"], "exclude each other"),
        ([*keys, "--batch-size", "0"], "batch_size"),
        ([*keys, "--batch-size", "8", "--rows-per-call", "4"], "at least batch_size"),
        ([*keys, "--gpus-per-actor", "1.5"], "whole number"),
        ([*keys, "--top-k", "0"], "top_k"),
        ([*keys, "--device", "cuda"], "GPU request"),
        ([*keys, "--output", str(data / "in" / "preds")], "inside the input"),
        ([*keys, "--evaluation-output", str(data / "out" / "e.json")], "inside the output"),
    ]
    for extra, expected in cases:
        code, err = run_cli([*base, *extra], capsys, caplog)
        assert code == 2 and "invalid settings" in err and expected in err, (extra, err)


def test_uris_carrying_secrets_are_refused_redacted(data, capsys, caplog):
    cases = [
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/images", "s3://***@bucket/images"),
        (f"s3://{SECRET}@bucket/images", "s3://***@bucket/images"),
        (f"s3://bucket/images?aws_secret={SECRET}", "aws_secret"),
        ("s3://anonymous@bucket/x/../images?region=eu-west-1", "'s3://anonymous@bucket/x/../images?region=eu-west-1'"),
        (f"file://user:{SECRET}@host/images", "'host'"),
    ]
    for uri, shown in cases:
        code, err = run_cli(["backfill", "--input", uri, "--output", str(data / "out")], capsys, caplog)
        assert code == 2 and shown in err, (uri, err)
        code, err = run_cli(["backfill", "--input", str(data / "in"), "--output", uri], capsys, caplog)
        assert code == 2 and shown in err, (uri, err)


@pytest.mark.ray  # the backfill's listing runs on Ray
def test_evaluate_and_run_time_errors_never_print_the_secret(data, capsys, caplog, monkeypatch):
    code, err = run_cli(["evaluate", "--predictions", str(data / "out"), "--s3-secret-key", SECRET], capsys, caplog)
    assert code == 2 and "give both" in err
    keys = ["--s3-access-key", "AKIAEXAMPLE", "--s3-secret-key", SECRET]
    code, err = run_cli(["evaluate", "--predictions", str(data / "missing"), *keys], capsys, caplog)
    assert code == 2 and "no Parquet files" in err

    (data / "out").mkdir()
    (data / "out" / "sales-2024.parquet").write_bytes(b"PAR1")
    code, err = run_cli(["backfill", "--input", str(data / "in"), "--output", str(data / "out"), *keys], capsys, caplog)
    assert code == 2 and "sales-2024.parquet" in err

    # A key id in the environment without its secret: the S3 options fail when the job resolves its input.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET)
    code, err = run_cli(
        ["backfill", "--input", "s3://bucket/in?endpoint_override=127.0.0.1:9", "--output", str(data / "o2")],
        capsys,
        caplog,
    )
    assert code == 2 and "give both" in err


def test_the_python_api_hides_the_secret_too(data):
    settings = dict(
        input=str(data / "in"), output=str(data / "out"), s3={"access_key": "AKIAEXAMPLE", "secret_key": SECRET}
    )
    for bad in (
        {"batch_size": 0},
        {"output": str(data / "in" / "x")},
        {"s3": {"secret_key": SECRET}},
        {"unknown": SECRET},
    ):
        with pytest.raises(ValidationError) as caught:
            BackfillConfig(**{**settings, **bad})
        assert_hidden(str(caught.value), repr(caught.value))
    config = BackfillConfig(**settings)
    assert isinstance(config.s3.secret_key, SecretStr) and config.s3.secret_key.get_secret_value() == SECRET
    assert_hidden(str(config), repr(config), config.model_dump_json(), str(config.model_dump()))
    with pytest.raises(ValidationError) as caught:
        S3Options(session_token=SECRET, secret_key=SECRET)
    assert_hidden(str(caught.value))
    # Only the filesystem's constructor arguments hold it in the clear.
    assert s3_filesystem_kwargs(parse_uri("s3://b/p"), config.s3, env={})["secret_key"] == SECRET
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET}
    filled = S3Options().with_env(env)
    assert_hidden(repr(filled))
    assert s3_filesystem_kwargs(parse_uri("s3://b/p"), filled, env={})["session_token"] == SECRET


def test_redact_uri():
    from batch.uris import redact_uri

    assert redact_uri(f"s3://id:{SECRET}@b/k?endpoint_override=h:1&scheme=http&x={SECRET}") == (
        "s3://***@b/k?endpoint_override=h:1&scheme=http&x=***"
    )
    assert redact_uri("s3://anonymous@b/k?region=us-west-2") == "s3://anonymous@b/k?region=us-west-2"
    assert redact_uri("/data/a@b/c?d") == "/data/a@b/c?d"  # a plain path is shown as is
    assert redact_uri("s3://[oops/x") == "<unparsable URI>"


@pytest.mark.process
def test_without_keys_s3_signs_with_the_aws_credentials_file(tmp_path):
    """No key flags and no AWS_* keys: twinfer passes none, and pyarrow's S3FileSystem (the AWS SDK's
    default chain) signs with ~/.aws/credentials. A loopback server records the Authorization header."""
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAFROMTHEFILE\naws_secret_access_key = file-secret\n"
    )
    probe = """
import http.server, threading
from batch.uris import resolve
seen = []
class Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        seen.append(self.headers.get("Authorization") or "")
        self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
    do_GET = do_HEAD
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
where = resolve(f"s3://bucket/key?endpoint_override=127.0.0.1:{server.server_port}&scheme=http")
where.filesystem.get_file_info(where.path)
print(seen[0])
"""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Credential=AKIAFROMTHEFILE/" in result.stdout
