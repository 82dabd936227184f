"""The OpenAPI document at /docs.json: BentoML's, completed with what its generator cannot say.

BentoML 1.4 writes each endpoint from its input model alone: one content type (multipart, because the
model has file fields), no required field (the file must be optional there, since the JSON body does
not carry it), and the same 400/404/500 answers in BentoML's own error shape for every endpoint. It
offers no hook to change that: the request body and responses come from its method objects
(`APIMethod.openapi_request/openapi_response`) and a module constant, the Service class is a slotted
attrs class, and only mounted FastAPI apps can add paths. So the service serves this document at
/docs.json in place of BentoML's (a route mounted ahead of BentoML's own), and this module fills in,
from what serving/http_input.py actually reads: both bodies (multipart files or JSON with base64),
the fields each requires and allows, and every answer with the service's `{"error", "detail"}` body.
`complete_spec` is pure: BentoML's document in, the completed one out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serving.http_input import BATCH, JSON, MULTIPART, SINGLE, Fields
from serving.schemas import BatchClassification, Classification, ErrorBody, ModelMetadata

REF = "#/components/schemas/{model}"
BEARER = "bearerAuth"
_NULL = {"type": "null"}

# The refusals each image endpoint can give, as serving/http_input.py and service.py produce them.
IMAGE_ERRORS = {
    400: "Malformed request: empty or unparsable body, unknown or missing field, bad base64, empty file",
    401: "Missing or wrong bearer token (only when the service is started with TRANSFERLINE_API_TOKEN)",
    413: "Over a limit: body, file bytes, pixels, image count, or a decompression bomb",
    415: "Unsupported content type, or a file in none of the accepted image formats",
    422: "A damaged or truncated image, or a bad value (top_k out of range, wrong JSON type)",
    503: "Overloaded: retry after the Retry-After header's seconds",
}
AUTH_ERRORS = {401: IMAGE_ERRORS[401]}
# A 1x1 PNG: an example request that the service answers with a prediction.
EXAMPLE_IMAGE_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGM4oREFAAMGAUsNYDTxAAAAAElFTkSuQmCC"


@dataclass(frozen=True)
class DocLimits:
    """Serve settings that bound valid requests, so the document states them."""

    top_k_max: int
    max_request_images: int


def complete_spec(spec: dict[str, Any], limits: DocLimits) -> dict[str, Any]:
    """BentoML's document with the prediction endpoints' bodies, answers and schemas made true."""
    spec = copy.deepcopy(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (Classification, BatchClassification, ErrorBody):  # and their nested models
        schemas.update(model_schemas(model))
    spec["components"]["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
    paths = spec["paths"]
    for fields, answer in ((SINGLE, Classification), (BATCH, BatchClassification)):
        operation = paths[f"/{'classify_batch' if fields.many else 'classify'}"]["post"]
        operation["requestBody"] = request_body(fields, limits)
        operation["responses"] = responses(answer, IMAGE_ERRORS)
        operation["security"] = optional_bearer()
    metadata = paths["/metadata"]["post"]
    metadata["responses"] = responses(ModelMetadata, AUTH_ERRORS)
    metadata["security"] = optional_bearer()
    metadata.pop("requestBody", None)  # any body is ignored
    paths["/metadata"]["get"] = {  # served by the Starlette route in service.py, for curl and browsers
        **{key: value for key, value in copy.deepcopy(metadata).items() if key != "x-bentoml-name"},
        "operationId": f"{metadata['operationId']}_get",
    }
    spec["components"]["schemas"] = {name: schemas[name] for name in sorted(referenced(spec, schemas))}
    return spec


def request_body(fields: Fields, limits: DocLimits) -> dict[str, Any]:
    """The two bodies an image endpoint reads: a multipart form with files, or JSON with base64."""
    top_k = {
        "type": "integer",
        "minimum": 1,
        "maximum": limits.top_k_max,
        "description": "how many labels to return, most probable first (default: the service's top_k_default)",
    }
    binary = {"type": "string", "format": "binary", "minLength": 1, "description": "an image file"}
    base64 = {"type": "string", "format": "byte", "minLength": 4, "description": "an image file, base64-encoded"}
    if fields.many:
        count = {"minItems": 1, "maxItems": limits.max_request_images}
        file, text = {"type": "array", "items": binary, **count}, {"type": "array", "items": base64, **count}
    else:
        file, text = binary, base64
    example = [EXAMPLE_IMAGE_B64] if fields.many else EXAMPLE_IMAGE_B64
    return {
        "required": True,
        "content": {
            MULTIPART: {"schema": _object({fields.file: file, "top_k": top_k}, fields.file)},
            JSON: {
                "schema": _object({fields.base64: text, "top_k": top_k}, fields.base64),
                "example": {fields.base64: example, "top_k": min(3, limits.top_k_max)},
            },
        },
    }


def responses(answer: type[BaseModel], errors: dict[int, str]) -> dict[str, Any]:
    """200 with the endpoint's model (inline, as BentoML writes it), and each refusal with the error body."""
    inline = {JSON: {"schema": model_schemas(answer)[answer.__name__]}}
    documented = {"200": {"description": "Successful Response", "content": inline}}
    for status, description in errors.items():
        documented[str(status)] = {"description": description, "content": _json(ErrorBody.__name__)}
    return documented


def optional_bearer() -> list[dict[str, list]]:
    """A token only when the service is started with one; OpenAPI says "optional" with an empty entry."""
    return [{}, {BEARER: []}]


def model_schemas(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema and its nested models' as OpenAPI 3.0 components (nullable, not type null)."""
    schema = model.model_json_schema(ref_template=REF, mode="serialization")
    nested = schema.pop("$defs", {})
    return {name: to_openapi30(value) for name, value in {model.__name__: schema, **nested}.items()}


def to_openapi30(schema: Any) -> Any:
    """Pydantic writes `X | None` as anyOf [X, {type: null}]; OpenAPI 3.0 has no null type: X, nullable."""
    if isinstance(schema, list):
        return [to_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: to_openapi30(value) for key, value in schema.items()}
    options = converted.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        rest = [option for option in options if option != _NULL]
        del converted["anyOf"]
        converted.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        converted["nullable"] = True
    return converted


def referenced(spec: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    """Names of the component schemas the paths use, directly or through other schemas."""
    prefix = REF.format(model="")
    found: set[str] = set()
    pending = [spec["paths"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix) and ref[len(prefix) :] not in found:
                found.add(ref[len(prefix) :])
                pending.append(schemas[ref[len(prefix) :]])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def _object(properties: dict[str, Any], required: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": [required], "additionalProperties": False}


def _json(model: str) -> dict[str, Any]:
    return {JSON: {"schema": {"$ref": REF.format(model=model)}}}
