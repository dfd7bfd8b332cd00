"""GET /openapi.json: a valid OpenAPI 3.1 document, built from the task and error classes.

Here without Ray: the document's validity, its coverage of every task and error code, its
parameter bounds against the tasks' own validators, and real answers of the model wrapper (what
the ingress sends, ``task.response(...)``) against its response schemas. The served document and
live HTTP answers are checked in tests/test_ui_browser.py, against a running app.
"""

from __future__ import annotations

import inspect

import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from deployments.config import IngressConfig
from deployments.openapi import NOT_PER_OPERATION, build_openapi, error_classes
from shared import ModelConfig, ModelWrapper, errors
from shared.errors import InvalidParameter, TwinferError
from shared.tasks import TASKS
from twinfer.samples import sample_jpegs

KEYS = IngressConfig(api_keys_env="TWINFER_API_KEYS")


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def codes(response: dict) -> list[str]:
    """The error codes an error response documents (its schema narrows Error's code enum)."""
    narrowed = response["content"]["application/json"]["schema"]["allOf"][1]
    return narrowed["properties"]["error"]["properties"]["code"]["enum"]


def schema_validator(document: dict, pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema at ``pointer`` in the document, its $refs resolved in it."""
    registry = Registry().with_resource("urn:twinfer:openapi", Resource.from_contents(document, DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": f"urn:twinfer:openapi#{pointer}"}, registry=registry)


def response_pointer(path: str, method: str, status: int | str) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema"


@pytest.mark.parametrize("settings", [IngressConfig(), KEYS], ids=["open", "api_keys"])
def test_the_document_is_valid_openapi_3_1(settings):
    document = build_openapi(settings)
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_one_path_per_task_with_the_tasks_parameters_and_defaults():
    document = build_openapi()
    assert set(document["paths"]) == {"/v1/models", "/healthz"} | {f"/v1/models/{{name}}/{name}" for name in TASKS}
    for name, task_cls in TASKS.items():
        operation = document["paths"][f"/v1/models/{{name}}/{name}"]["post"]
        query = {p["name"]: p["schema"]["default"] for p in operation["parameters"] if p["in"] == "query"}
        assert query == task_cls(["x"]).params({})
        assert set(operation["requestBody"]["content"]) == {
            "image/*",
            "application/octet-stream",
            "multipart/form-data",
        }
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            f"{name.capitalize()}Response"
        )


def test_documented_bounds_are_the_validators_bounds():
    document = build_openapi()
    checked = 0
    for name, task_cls in TASKS.items():
        task = task_cls(["x"])
        operation = document["paths"][f"/v1/models/{{name}}/{name}"]["post"]
        for parameter in (p for p in operation["parameters"] if p["in"] == "query"):
            schema, key = parameter["schema"], parameter["name"]
            step = 1 if schema["type"] == "integer" else 1e-6
            assert task.params({key: schema["minimum"]})[key] == schema["minimum"]
            assert task.params({key: schema["maximum"]})[key] == schema["maximum"]
            for outside in (schema["minimum"] - step, schema["maximum"] + step):
                with pytest.raises(InvalidParameter):
                    task.params({key: outside})
            checked += 1
    assert checked >= 2  # top_k, score_threshold


def test_every_error_class_is_documented_with_its_status():
    defined = {cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, TwinferError)}
    assert set(error_classes()) == defined
    document = build_openapi(KEYS)
    error_codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert sorted(error_codes) == sorted(cls.code for cls in defined)
    answered: dict[str, set[str]] = {}
    for _, _, operation in operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith("2") and "allOf" in response["content"]["application/json"]["schema"]:
                for code in codes(response):
                    answered.setdefault(code, set()).add(status)
    for cls in defined - set(NOT_PER_OPERATION):
        assert answered.get(cls.code) == {str(cls.http_status)}, cls.code
    for cls in NOT_PER_OPERATION:
        assert cls.code not in answered


def test_api_keys_add_401_and_the_bearer_scheme_to_the_v1_routes_only():
    open_document, keyed = build_openapi(), build_openapi(KEYS)
    assert "securitySchemes" not in open_document["components"] and "security" not in open_document
    assert all("401" not in op["responses"] for _, _, op in operations(open_document))
    assert keyed["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key>",
    }
    for path, _, operation in operations(keyed):
        if path.startswith("/v1/"):
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        else:
            assert operation["security"] == [] and "401" not in operation["responses"]


def test_error_bodies_validate_against_their_status_and_no_other():
    document = build_openapi(KEYS)
    for path, method, operation in operations(document):
        for status in operation["responses"]:
            if status.startswith("2") or path == "/healthz":
                continue
            validator = schema_validator(document, response_pointer(path, method, status))
            documented = codes(operation["responses"][status])
            assert documented and all(c.http_status == int(status) for c in error_classes() if c.code in documented)
            for cls in error_classes():
                body = {"error": cls("a message").to_dict()}
                assert validator.is_valid(body) == (cls.code in documented), (path, status, cls.code)
            if any(c.retry_after_s for c in error_classes() if str(c.http_status) == status):
                assert "Retry-After" in operation["responses"][status]["headers"]


@pytest.fixture(scope="module")
def embedder() -> ModelWrapper:
    return ModelWrapper(ModelConfig(task="embed"))


def test_the_wrappers_answers_validate_against_the_response_schemas(embedded_wrapper, embedder):
    """Classify and embed answers, as the ingress builds its bodies (detect: live, in test_ui_browser)."""
    document = build_openapi()
    data = sample_jpegs(("chelsea",))["chelsea"]
    for wrapper, name in ((embedded_wrapper, "classify"), (embedder, "embed")):
        (answer,) = wrapper.predict_batch([wrapper.load(data)])
        body = wrapper.task.response("served-name", answer)
        schema_validator(document, f"/components/schemas/{name.capitalize()}Response").validate(body)
        assert not schema_validator(document, f"/components/schemas/{name.capitalize()}Response").is_valid(
            {**body, "model": 7}
        )
