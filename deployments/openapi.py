"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Built from the code it describes, so it cannot drift from what the ingress answers:

- one path per task in ``shared.tasks.TASKS``; a task's query parameters and their defaults come
  from its ``params({})``, and its response body from its own ``response`` applied to an answer
  rebuilt from its Parquet columns (``arrow_fields`` -> ``answer_from_row``);
- error responses from the subclasses of ``shared.errors.TwinferError``, grouped by HTTP status,
  each status listing its codes (and ``Retry-After`` / ``WWW-Authenticate`` where sent);
- the model list's ``task`` from ``TASKS`` and its ``batching`` from ``BatchingConfig``.

The document depends on the ingress settings only (API keys on or off, the body cap), never on the
models served, so it holds nothing that needs a key to see.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pyarrow as pa

from deployments.config import SERVED_NAME, BatchingConfig, IngressConfig
from shared import errors
from shared.tasks import MAX_TOP_K, TASKS, Task

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "apiKey"

# What each task parameter means and its bounds; a task whose params() yields a name missing here
# cannot be described, and building the document fails (tests/test_openapi.py checks the bounds
# against the tasks' validators).
PARAMETERS: dict[str, dict[str, Any]] = {
    "top_k": {
        "description": "how many classes to answer, best first",
        "minimum": 1,
        "maximum": MAX_TOP_K,
    },
    "score_threshold": {
        "description": "answer only detections scoring at least this; the default is the model's "
        "`score_threshold` setting (shown here: the setting's own default)",
        "minimum": 0.0,
        "maximum": 1.0,
    },
}

FIELDS = {  # descriptions of response fields, where a name alone does not say enough
    "model": "the served name the request named",
    "label": "the class's name",
    "index": "the class's index in the model's label list",
    "score": "probability (classify) or detection confidence (detect), in [0, 1]",
    "box": "[x1, y1, x2, y2] in the original image's pixels, after EXIF orientation",
    "dim": "the embedding's length",
    "embedding": "the pooled features before the classifier head, L2-normalised",
}

# Errors no documented operation answers: they are listed in the Error schema's codes only.
NOT_PER_OPERATION = {
    errors.NotFound: "a path that is not a route",
    errors.MethodNotAllowed: "a route called with another method",
    errors.WeightsUnavailable: "at start-up: the model's deployment fails, requests then get `unavailable`",
    errors.InvalidRequest: "the Open Inference Protocol's routes (/v2, gRPC), not described here",
    errors.ClientDisconnected: "a client that went away mid-request: recorded, never received",
}
EVERY_ROUTE = (errors.TwinferError, errors.Overloaded, errors.Unavailable)  # TwinferError itself: 500 internal

IMAGE_TYPES = ("image/*", "application/octet-stream")


def error_classes() -> list[type[errors.TwinferError]]:
    """TwinferError and every subclass, in definition order (parents before children)."""
    found, stack = [], [errors.TwinferError]
    while stack:
        cls = stack.pop(0)
        found.append(cls)
        stack[:0] = cls.__subclasses__()
    return found


def build_openapi(settings: IngressConfig | None = None) -> dict:
    settings = settings or IngressConfig()
    keys = settings.api_keys_enabled
    common = list(EVERY_ROUTE) + ([errors.Unauthorized] if keys else [])
    image_errors = [
        cls
        for cls in error_classes()
        if cls not in NOT_PER_OPERATION and cls not in EVERY_ROUTE and cls is not errors.Unauthorized
    ]
    paths: dict[str, Any] = {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The models served here",
                "responses": {
                    "200": _json("one entry per served model", {"$ref": "#/components/schemas/ModelList"}),
                    **_error_responses(common),
                },
            }
        }
    }
    for name, task_cls in TASKS.items():
        task = task_cls(["label"])
        defaults = task.params({})
        answered = [cls for cls in image_errors if defaults or cls is not errors.InvalidParameter]
        paths[f"/v1/models/{{name}}/{name}"] = {
            "post": {
                "operationId": name,
                "summary": f"{name.capitalize()} one image",
                "description": f"For models whose `task` is `{name}` (`GET /v1/models`); another model "
                "is answered 404 `wrong_task`.",
                "parameters": [_name_parameter()] + [_query_parameter(p, v) for p, v in defaults.items()],
                "requestBody": _image_body(settings.max_body_bytes),
                "responses": {
                    "200": _json(f"the {name} answer", {"$ref": f"#/components/schemas/{_schema_name(name)}"}),
                    **_error_responses(common + answered),
                },
            }
        }
    paths["/healthz"] = {
        "get": {
            "operationId": "health",
            "summary": "Readiness: 200 once every deployment of the application is healthy",
            "security": [],
            "responses": {
                "200": _json("all deployments healthy", {"$ref": "#/components/schemas/Health"}),
                "503": _json("some deployment is not healthy (yet)", {"$ref": "#/components/schemas/Health"}),
            },
        }
    }
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "twinfer",
            "version": _version(),
            "description": "Image classification, detection and embeddings on Ray Serve. Every error is JSON "
            '`{"error": {"code", "message"}}`; the codes: '
            + "; ".join(f"`{cls.code}` ({cls.http_status})" for cls in error_classes())
            + ". Serve's proxy may answer 408 (request timeout) or 503 (ingress queue full) itself.",
        },
        "servers": [{"url": ".", "description": "where this document is served"}],
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
    if keys:
        document["components"]["securitySchemes"] = {
            SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
        }
        document["security"] = [{SECURITY_SCHEME: []}]
    return document


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": [cls.code for cls in error_classes()]},
                        "message": {"type": "string", "description": "for people; never contains a key"},
                    },
                }
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}},
        },
        "Model": {
            "type": "object",
            "required": ["name", "model", "task", "dim", "labels", "device", "precision", "batching"],
            "properties": {
                "name": {"type": "string", "description": "the served name: /v1/models/{name}/{task}"},
                "model": {"type": "string", "description": "the registry model behind it"},
                "task": {"type": "string", "enum": list(TASKS)},
                "dim": {"type": ["integer", "null"], "description": "the embedding's length; null for other tasks"},
                "labels": {"type": "integer", "description": "how many classes the model knows"},
                "device": {"type": "string"},
                "precision": {"type": "string"},
                "weights": {"type": "string"},
                "batching": BatchingConfig.model_json_schema(),
                "replica": {"type": "string", "description": "the replica that answered"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "deployments": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "each deployment's state; with API keys on, only for a request with a valid key",
                },
            },
        },
    }
    for name, task_cls in TASKS.items():
        schemas[_schema_name(name)] = _response_schema(task_cls)
    return schemas


def _response_schema(task_cls: type[Task]) -> dict:
    """The task's HTTP body, from its own ``response`` applied to an answer rebuilt from a sample row
    of its Parquet columns: the fields, their nesting and their JSON types are the task's."""
    task = task_cls(["label"])
    dim = 2
    row = {field.name: _sample(field.type, dim) for field in task.arrow_fields(dim)}
    body = task.response("model", task.answer_from_row(row))
    return _infer_schema(body)


def _sample(arrow_type: pa.DataType, dim: int) -> Any:
    if pa.types.is_fixed_size_list(arrow_type):
        return [_sample(arrow_type.value_type, dim) for _ in range(arrow_type.list_size)]
    if pa.types.is_list(arrow_type):
        return [_sample(arrow_type.value_type, dim)]
    if pa.types.is_string(arrow_type):
        return "label"
    if pa.types.is_integer(arrow_type):
        return 1
    if pa.types.is_floating(arrow_type):
        return 0.5
    raise TypeError(f"no JSON type for the Arrow type {arrow_type}")


def _infer_schema(value: Any, key: str | None = None) -> dict:
    if isinstance(value, dict):
        schema = {
            "type": "object",
            "required": list(value),
            "properties": {k: _infer_schema(v, k) for k, v in value.items()},
        }
    elif isinstance(value, list):
        schema = {"type": "array", "items": _infer_schema(value[0]) if value else {}}
    elif isinstance(value, bool):
        schema = {"type": "boolean"}
    elif isinstance(value, int):
        schema = {"type": "integer"}
    elif isinstance(value, float):
        schema = {"type": "number"}
    elif isinstance(value, str):
        schema = {"type": "string"}
    else:
        raise TypeError(f"no JSON type for {type(value).__name__}")
    if key in FIELDS:
        schema["description"] = FIELDS[key]
    if key == "box":
        schema.update(minItems=4, maxItems=4)
    return schema


def _query_parameter(name: str, default: Any) -> dict:
    if name not in PARAMETERS:
        raise KeyError(f"task parameter {name!r} is not described in deployments.openapi.PARAMETERS")
    described = dict(PARAMETERS[name])
    kind = "integer" if isinstance(default, int) and not isinstance(default, bool) else "number"
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": described.pop("description"),
        "schema": {"type": kind, "default": default, **described},
    }


def _name_parameter() -> dict:
    return {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "a served model's name, as `GET /v1/models` lists it",
        "schema": {"type": "string", "pattern": SERVED_NAME},
    }


def _image_body(max_bytes: int) -> dict:
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    content = {media: {"schema": binary} for media in IMAGE_TYPES}
    content["multipart/form-data"] = {
        "schema": {"type": "object", "required": ["file"], "properties": {"file": binary}},
    }
    return {
        "required": True,
        "description": f"the image bytes (at most {max_bytes} bytes; larger bodies get 413 `body_too_large`), "
        "raw or as the `file` field of a form. Its format is read from the bytes, not from the content type.",
        "content": content,
    }


def _error_responses(classes: list[type[errors.TwinferError]]) -> dict[str, Any]:
    by_status: dict[int, list[type[errors.TwinferError]]] = {}
    for cls in classes:
        by_status.setdefault(cls.http_status, []).append(cls)
    responses = {}
    for status in sorted(by_status):
        group = by_status[status]
        codes = [cls.code for cls in group]
        response = _json(
            "\n".join(f"- `{cls.code}`" + (f": {_doc(cls)}" if _doc(cls) else "") for cls in group),
            {
                "allOf": [
                    {"$ref": "#/components/schemas/Error"},
                    {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
                ]
            },
        )
        headers = {}
        if any(cls.retry_after_s is not None for cls in group):
            headers["Retry-After"] = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        if errors.Unauthorized in group:
            headers["WWW-Authenticate"] = {"description": 'Bearer realm="twinfer"', "schema": {"type": "string"}}
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


def _doc(cls: type) -> str:
    if cls is errors.TwinferError:
        return "anything unexpected; logged on the server under the response's x-request-id"
    if "__doc__" not in vars(cls) or not cls.__doc__:
        return ""
    return " ".join(cls.__doc__.split())


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schema_name(task: str) -> str:
    return f"{task.capitalize()}Response"


def _version() -> str:
    try:
        return version("twinfer")
    except PackageNotFoundError:
        return "0.0.0"
