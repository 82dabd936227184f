"""Reading image requests off HTTP: multipart uploads or JSON with base64, within limits, with precise errors.

Every way a request can be wrong ends here as an `ApiError` (status, message, detail) that the service
turns into a JSON 4xx: the body is read by this module, not by BentoML's generic parser, because that
one answers some malformed uploads with a 500 and fetches URLs given in place of files.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MULTIPART = "multipart/form-data"
JSON = "application/json"
PICKLE = "application/vnd.bentoml+pickle"  # BentoML's internal framing between its own services
MAX_FIELD_BYTES = 64 * 1024  # multipart text fields (top_k): anything this large is not a number
BASE64_OVERHEAD = 4 / 3
ENVELOPE_BYTES = 64 * 1024  # multipart headers, JSON keys, boundaries


class ApiError(Exception):
    """An answer other than success, with its HTTP status: `{"error": message, "detail": detail}`."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, self.status, headers=self.headers)


@dataclass(frozen=True)
class InputLimits:
    max_request_images: int
    max_image_bytes: int
    top_k_default: int
    top_k_max: int

    def max_body_bytes(self, images: int) -> int:
        """Largest body worth reading: every image at its limit, base64-encoded, plus the envelope."""
        return int(images * (self.max_image_bytes * BASE64_OVERHEAD + 1024)) + ENVELOPE_BYTES


@dataclass(frozen=True)
class Fields:
    """The names one endpoint accepts: a file field and its JSON base64 twin."""

    file: str
    base64: str
    many: bool

    @property
    def allowed(self) -> list[str]:
        return [self.file, self.base64, "top_k"]

    def usage(self) -> str:
        if self.many:
            return (
                f"send multipart files `{self.file}` (curl -F {self.file}=@a.jpg -F {self.file}=@b.jpg) "
                f'or JSON {{"{self.base64}": ["<base64>", ...]}}'
            )
        return (
            f"send a multipart file `{self.file}` (curl -F {self.file}=@cat.jpg) "
            f'or JSON {{"{self.base64}": "<base64>"}}'
        )


SINGLE = Fields(file="image", base64="image_b64", many=False)
BATCH = Fields(file="images", base64="images_b64", many=True)


@dataclass(frozen=True)
class ImageRequest:
    """A well-formed request: raw image bytes (not yet decoded) and how many labels to return."""

    images: list[bytes]
    top_k: int


async def parse_image_request(request: Request, fields: Fields, limits: InputLimits) -> ImageRequest:
    """Read and check the body; raises ApiError (400, 413, 415, 422) for anything malformed."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_images = limits.max_request_images if fields.many else 1
    body = _limited_stream(request, limits.max_body_bytes(max_images))
    if media_type == MULTIPART:
        images, top_k = await _read_multipart(request, body, fields, max_images)
    elif media_type == JSON or (media_type == "" and _declared_length(request) == 0):
        images, top_k = _read_json(await _collect(body), fields, max_images)
    else:
        raise ApiError(
            415,
            f"unsupported content type {media_type or '(none)'!r}: use {MULTIPART} or {JSON}",
            fields.usage(),
        )
    if not images:
        raise ApiError(400, f"no image in the request: {fields.usage()}", {"accepted_fields": fields.allowed})
    if len(images) > max_images:
        raise _too_many(len(images), max_images)
    return ImageRequest(images, _check_top_k(top_k, limits))


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        return int(declared)
    except ValueError:
        raise ApiError(400, f"invalid Content-Length header {declared!r}") from None


async def _limited_stream(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    declared = _declared_length(request)
    if declared is not None and declared > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes is above the limit of {max_bytes} bytes")
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ApiError(413, f"request body is above the limit of {max_bytes} bytes")
        yield chunk


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def _too_many(count: int | str, limit: int) -> ApiError:
    return ApiError(413, f"too many images: {count} in one request, the limit is {limit}", {"limit": limit})


async def _read_multipart(
    request: Request, body: AsyncIterator[bytes], fields: Fields, max_images: int
) -> tuple[list[bytes], Any]:
    # One file beyond the limit is let through, so the count check can say precisely what is wrong.
    parser = MultiPartParser(
        request.headers, body, max_files=max_images + 1, max_fields=4, max_part_size=MAX_FIELD_BYTES
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        message = str(exc)
        if message.startswith("Too many files"):
            raise _too_many(f"more than {max_images + 1}", max_images) from None
        status = 413 if "exceeded maximum size" in message else 400
        raise ApiError(status, f"malformed multipart body: {message}") from None
    images: list[bytes] = []
    top_k: Any = None
    try:
        for name, value in form.multi_items():
            if name == fields.file:
                if not isinstance(value, UploadFile):
                    raise ApiError(400, f"field {name!r} must be a file upload, not text: {fields.usage()}")
                images.append(await value.read())
            elif name == "top_k":
                if isinstance(value, UploadFile):
                    raise ApiError(400, "field 'top_k' must be a text field holding a number, not a file")
                top_k = value
            else:
                raise _unknown_field(name, fields)
    finally:
        await form.close()
    if len(images) > 1 and not fields.many:
        raise ApiError(
            400, f"{len(images)} files in field {fields.file!r}: one image per request here; use /classify_batch"
        )
    return images, top_k


def _unknown_field(name: str, fields: Fields) -> ApiError:
    return ApiError(400, f"unknown field {name!r}: {fields.usage()}", {"accepted_fields": fields.allowed})


def _read_json(body: bytes, fields: Fields, max_images: int) -> tuple[list[bytes], Any]:
    if not body.strip():
        raise ApiError(400, f"empty request body: {fields.usage()}")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the decoder allows
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"JSON body must be an object: {fields.usage()}")
    for name in payload:
        if name not in (fields.base64, "top_k"):
            raise _unknown_field(name, fields)
    if fields.base64 not in payload:
        raise ApiError(400, f"missing field {fields.base64!r}: {fields.usage()}", {"accepted_fields": fields.allowed})
    value = payload[fields.base64]
    if fields.many:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ApiError(422, f"field {fields.base64!r} must be a list of base64 strings")
        if len(value) > max_images:
            raise _too_many(len(value), max_images)
        images = [_decode_base64(item, f"{fields.base64}[{i}]") for i, item in enumerate(value)]
    else:
        if not isinstance(value, str):
            raise ApiError(422, f"field {fields.base64!r} must be a base64 string")
        images = [_decode_base64(value, fields.base64)]
    return images, payload.get("top_k")


def _decode_base64(text: str, where: str) -> bytes:
    """Standard base64; a `data:image/...;base64,` prefix and line breaks are allowed."""
    if text.startswith("data:") and "," in text[:256]:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{where} is not valid base64: {exc}") from None


# ASCII digits only, and few: str.isdigit() also accepts "²" (which int() refuses) and int() refuses strings
# of more than 4300 digits; either used to escape as a 500.
_TOP_K_TEXT = re.compile(r"\+?[0-9]{1,9}")
_SHOWN_CHARS = 40


def _check_top_k(value: Any, limits: InputLimits) -> int:
    if value is None:
        return limits.top_k_default
    if isinstance(value, str) and _TOP_K_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.top_k_max:
        shown = repr(value)
        if len(shown) > _SHOWN_CHARS:
            shown = f"{shown[:_SHOWN_CHARS]}... ({len(shown)} characters)"
        raise ApiError(422, f"top_k must be an integer from 1 to {limits.top_k_max}, got {shown}")
    return value


class RefusePickle:
    """ASGI middleware: a pickled body gets the service's JSON 415 like any other unsupported type.

    BentoML refuses it on its own too, but with a differently shaped body and a traceback in the log per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            media_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
            if media_type == PICKLE:
                refusal = ApiError(415, f"unsupported content type {PICKLE!r}: use {MULTIPART} or {JSON}")
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
