"""Optional API keys: off by default; when on, every route but /healthz needs a bearer key.

The key loading and checking are tested directly; the routes over real HTTP against Serve, with
keys from a file (tmp_path) and from an environment variable given to the ingress's runtime_env.
"""

from __future__ import annotations

import httpx
import pydantic
import pytest
from ray import serve

from deployments.app import build
from deployments.config import AppArgs, IngressConfig
from deployments.http import check_bearer, load_api_keys
from deployments.service import InferenceService
from shared.errors import Unauthorized
from tests.images import small_jpeg

MODEL = "efficientnet_lite0"
KEY_A = "k-a-0123456789abcdef"
KEY_B = "k-b-fedcba9876543210"


def header(authorization: str | None) -> str:
    """The Authorization header's value as a request carries it (absent: empty)."""
    return authorization or ""


def test_keys_are_off_by_default():
    settings = IngressConfig()
    assert not settings.api_keys_enabled and load_api_keys(settings) == ()


def test_keys_come_from_a_file_and_an_env_var(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text(f"# production\n{KEY_A}\n\n   # rotated 2026-11\n  {KEY_B}  \n")
    monkeypatch.setenv("TWINFER_KEYS_TEST", f" {KEY_B} ,,{KEY_A}")
    from_file = load_api_keys(IngressConfig(api_keys_file=str(keys)))
    from_env = load_api_keys(IngressConfig(api_keys_env="TWINFER_KEYS_TEST"))
    both = load_api_keys(IngressConfig(api_keys_file=str(keys), api_keys_env="TWINFER_KEYS_TEST"))
    assert len(from_file) == len(from_env) == len(both) == 2
    assert set(from_file) == set(from_env) == set(both)
    for digests in (from_file, from_env):
        check_bearer(header(f"Bearer {KEY_A}"), digests)
        check_bearer(header(f"bearer   {KEY_B}"), digests)  # the scheme is case-insensitive (RFC 7235)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {KEY_A}", f"Bearer {KEY_A}x", f"Bearer {KEY_A[:-1]}", KEY_A],
)
def test_anything_but_a_listed_bearer_key_is_refused(tmp_path, authorization):
    (tmp_path / "keys").write_text(KEY_A + "\n")
    with pytest.raises(Unauthorized) as raised:
        check_bearer(header(authorization), load_api_keys(IngressConfig(api_keys_file=str(tmp_path / "keys"))))
    assert KEY_A not in str(raised.value)


@pytest.mark.parametrize(
    "case, content, message",
    [
        ("unset", None, "TWINFER_KEYS_TEST is not set"),
        ("env_empty", " , ", "TWINFER_KEYS_TEST holds no key"),
        ("file_missing", None, "cannot read"),
        ("file_only_comments", "# no keys yet\n\n", "holds no key"),
        ("short", "short-key\n", "shorter than 16"),
    ],
)
def test_a_configured_source_without_usable_keys_stops_the_ingress_from_starting(
    tmp_path, monkeypatch, case, content, message
):
    monkeypatch.delenv("TWINFER_KEYS_TEST", raising=False)
    if case.startswith("env") or case == "unset":
        if content is not None:
            monkeypatch.setenv("TWINFER_KEYS_TEST", content)
        settings = {"api_keys_env": "TWINFER_KEYS_TEST"}
    else:
        if content is not None:
            (tmp_path / "keys").write_text(content)
        settings = {"api_keys_file": str(tmp_path / "keys")}
    with pytest.raises(ValueError, match=message) as raised:
        InferenceService(
            {}, {}, IngressConfig.model_validate(settings)
        )  # in the replica's constructor: a failed deploy
    assert "short-key" not in str(raised.value)  # a key is never echoed


def test_keys_cannot_be_written_inline_in_the_config():
    with pytest.raises(pydantic.ValidationError):
        IngressConfig.model_validate({"api_keys": [KEY_A]})
    with pytest.raises(pydantic.ValidationError):  # a name of a variable, not its value
        IngressConfig.model_validate({"api_keys_env": "abc,def"})


def app_args(**ingress) -> AppArgs:
    return AppArgs.model_validate(
        {
            "ingress": {"num_cpus": 0.25, "decode_threads": 1, **ingress},
            "models": [
                {
                    "model": {"name": MODEL, "weights": "random"},
                    "num_cpus": 0.25,
                    "max_ongoing_requests": 4,
                    "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 1},
                }
            ],
        }
    )


def check_routes(client: httpx.Client, prefix: str, good_keys: list[str]) -> None:
    classify = f"{prefix}/v1/models/{MODEL}/classify"
    image = {"content": small_jpeg(), "headers": {"content-type": "image/jpeg"}}
    assert client.get(f"{prefix}/healthz").status_code == 200  # open, for load balancers and probes
    refused = [
        client.get(f"{prefix}/v1/models"),
        client.post(classify, **image),
        client.post(
            classify,
            content=image["content"],
            headers={**image["headers"], "authorization": "Bearer not-a-key-at-all!"},
        ),
        client.get(f"{prefix}/v1/models", headers={"authorization": f"Basic {good_keys[0]}"}),
        client.get(f"{prefix}/no/such/route"),  # no key: not even told whether a route exists
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    for key in good_keys:
        auth = {"authorization": f"Bearer {key}"}
        assert client.get(f"{prefix}/v1/models", headers=auth).status_code == 200
        response = client.post(classify, content=image["content"], headers={**image["headers"], **auth})
        assert response.status_code == 200 and len(response.json()["predictions"]) == 5
        assert client.get(f"{prefix}/no/such/route", headers=auth).status_code == 404


def test_routes_need_a_key_from_the_key_file_or_the_env_var_and_are_open_without_keys(serve_url, tmp_path):
    """One ingress given both sources: the file's key and the variable's key each open the routes."""
    (tmp_path / "keys").write_text(f"# test keys\n{KEY_A}\n")
    app = "auth"
    env = {"env_vars": {"TWINFER_API_KEYS": KEY_B}}
    settings = {"api_keys_file": str(tmp_path / "keys"), "api_keys_env": "TWINFER_API_KEYS"}
    serve.run(build(app_args(**settings), ingress_runtime_env=env), name=app, route_prefix=f"/{app}")
    try:
        with httpx.Client(base_url=serve_url, timeout=120) as client:
            check_routes(client, f"/{app}", [KEY_A, KEY_B])
            # the same app without the settings: no key needed (the default)
            serve.run(build(app_args()), name=app, route_prefix=f"/{app}")
            assert client.get(f"/{app}/v1/models").status_code == 200
    finally:
        serve.delete(app)
