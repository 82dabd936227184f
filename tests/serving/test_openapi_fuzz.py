"""The live service's OpenAPI document: complete enough to generate clients from, and true under schemathesis.

/docs.json is BentoML's document completed by serving/openapi.py: both request bodies (multipart files,
JSON with base64), the required image field, the 4xx/503 answers with the service's `{"error", "detail"}`
body. Schemathesis runs through its command line (`st run`): the examples phase (the document's JSON
example is a real image), the coverage phase (boundary and schema-violating values for every field), then
random fuzzing, seeded, with these checks:

- not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
  response_headers_conformance: every answer is documented, in its documented type and shape;
- positive_data_acceptance: schema-valid requests are answered 200, or 415 where the bytes are not an
  image (no schema can say "decodable image": schemathesis sends a real PNG for multipart files, but
  base64 strings are random bytes);
- missing_required_header, unsupported_method.

Not run: negative_data_rejection, because the service is lenient on purpose where the document is strict
(JSON top_k "2" or null, data: URLs and line breaks in base64); allow_header_conformance, because the 405
for other methods on /metadata comes from BentoML's POST route, which does not know the mounted GET.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.hostile_uploads import SERVER_LIMITS

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 200
SEED = 20240611
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
)
CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = [200, 415]
"""


@pytest.fixture(scope="module")
def document(corpus_server) -> dict:
    answer = httpx.get(f"{corpus_server.url}/docs.json", timeout=30)
    assert answer.status_code == 200
    return answer.json()


def resolve(document: dict, schema: dict) -> dict:
    ref = schema.get("$ref", "")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


@pytest.mark.parametrize(
    ("path", "file", "base64"), [("/classify", "image", "image_b64"), ("/classify_batch", "images", "images_b64")]
)
def test_document_describes_both_bodies_and_every_refusal(document: dict, path: str, file: str, base64: str):
    operation = document["paths"][path]["post"]
    bodies = operation["requestBody"]["content"]
    assert operation["requestBody"]["required"] is True
    assert set(bodies) == {"multipart/form-data", "application/json"}
    form, payload = bodies["multipart/form-data"]["schema"], bodies["application/json"]["schema"]
    assert form["required"] == [file] and set(form["properties"]) == {file, "top_k"}
    assert payload["required"] == [base64] and set(payload["properties"]) == {base64, "top_k"}
    assert form["additionalProperties"] is False and payload["additionalProperties"] is False
    assert form["properties"]["top_k"]["maximum"] == SERVER_LIMITS.top_k_max
    if file == "images":
        assert form["properties"][file]["maxItems"] == SERVER_LIMITS.max_request_images
        assert form["properties"][file]["items"]["format"] == "binary"
    else:
        assert form["properties"][file]["format"] == "binary"
    responses = operation["responses"]
    assert set(responses) == {"200", "400", "401", "413", "415", "422", "503"}
    for status in ("400", "401", "413", "415", "422", "503"):
        error = resolve(document, responses[status]["content"]["application/json"]["schema"])
        assert set(error["properties"]) == {"error", "detail"} and error["required"] == ["error", "detail"], status
    answer = resolve(document, responses["200"]["content"]["application/json"]["schema"])
    assert {"model_tag", "data_version"} <= set(answer["required"])


def test_document_example_is_answered_as_documented(document: dict, corpus_server):
    body = document["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["example"]
    answer = httpx.post(f"{corpus_server.url}/classify", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == body["top_k"]
    metadata = document["paths"]["/metadata"]
    assert set(metadata) == {"get", "post"}
    git_commit = resolve(document, metadata["get"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert git_commit["properties"]["git_commit"]["nullable"] is True  # BentoML's own generator drops the null


def test_schemathesis_finds_the_service_true_to_its_document(corpus_server, document: dict, tmp_path: Path):
    assert {"/classify", "/classify_batch", "/metadata"} <= set(document["paths"])
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{corpus_server.url}/docs.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    assert re.search(r"Examples \(in [0-9.]+s\)\s+✅ 2 passed", report), report[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated, report[-3000:]
    assert int(generated.group(1)) >= EXAMPLES_PER_OPERATION and generated.group(1) == generated.group(2), report[
        -3000:
    ]
    assert corpus_server.process.poll() is None
    assert httpx.get(f"{corpus_server.url}/readyz", timeout=30).status_code == 200
    log = corpus_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, corpus_server.log_tail(60)
