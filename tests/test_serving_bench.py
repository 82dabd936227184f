"""bench.serving_bench: its no-model service must answer like the real one, or it is no ceiling."""

from __future__ import annotations

import asyncio
import io
import types

import pytest
from PIL import Image
from starlette.requests import Request

from bench.serving_bench import CONCURRENCY, NOOP_SERVICE, require_clean_ceiling
from serving.schemas import Classification

BOUNDARY = "----transferline-test"


def _upload(data: bytes) -> Request:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/classify", "headers": headers}, receive)


def test_the_no_model_service_answers_a_valid_classification():
    module = types.ModuleType("noop_service")
    exec(compile(NOOP_SERVICE.replace("WORKERS", "1"), "noop_service.py", "exec"), module.__dict__)
    service = module.Noop.inner()
    image = io.BytesIO()
    Image.new("RGB", (128, 96), "gray").save(image, "JPEG")
    response = asyncio.run(service.classify(_upload(image.getvalue())))
    assert response.status_code == 200
    answer = Classification.model_validate_json(response.body)  # every field the real service's answer has
    assert len(answer.predictions) == 5 and not answer.out_of_distribution


def test_a_no_model_service_that_answered_errors_fails_the_benchmark():
    clean = {str(c): {"errors": 0} for c in CONCURRENCY}
    require_clean_ceiling({"no_model": clean})
    with pytest.raises(RuntimeError, match=r"no-model service answered errors .*'32': 14106"):
        require_clean_ceiling({"no_model": {**clean, "32": {"errors": 14106}}})
