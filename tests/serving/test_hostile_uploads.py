"""The bad-input corpus against a real `bentoml serve`: a precise 4xx or a correct prediction, never a 5xx.

Each case of tests/serving/hostile_uploads.py is sent as its exact bytes over loopback HTTP. Refusals must
carry the service's JSON error with the expected status and words; odd but valid images must get the same
answer as offline scoring of the same file. After the whole corpus, the service must still answer normally,
with no server error counted and no traceback logged.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving.conftest import CLASSES, ServingModels
from tests.serving.hostile_uploads import Case, Classified, Refused, build_corpus, main, valid_images

pytestmark = pytest.mark.slow

CORPUS = {case.name: case for case in build_corpus()}
STREAM_CHUNK = 64 * 1024

Scorer = Callable[[tuple[bytes, ...]], np.ndarray]


@pytest.fixture(scope="module")
def client(corpus_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=corpus_server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def offline(serving_models: ServingModels, tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    """Probabilities for image files through transferline.evaluation.scoring, as the gate scores models offline."""
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.evaluation.onnx_classifier import OnnxClassifier
    from transferline.evaluation.scoring import load_pixels

    spec = PreprocessSpec.from_dict(json.loads((serving_models.export_dir / "preprocess.json").read_text()))
    classifier = OnnxClassifier.open(serving_models.export_dir / "model.onnx", CLASSES, spec)
    folder = tmp_path_factory.mktemp("offline")
    numbers = itertools.count()

    def score(images: tuple[bytes, ...]) -> np.ndarray:
        paths = [folder / f"{next(numbers)}.img" for _ in images]
        for path, data in zip(paths, images, strict=True):
            path.write_bytes(data)
        return classifier.probabilities(load_pixels(paths, spec), batch_size=64)

    return score


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = {"content-type": case.content_type} if case.content_type is not None else {}
    if case.chunked:  # an iterator: httpx streams it with Transfer-Encoding: chunked and no Content-Length
        content = iter([case.body[i : i + STREAM_CHUNK] for i in range(0, len(case.body), STREAM_CHUNK)])
        return client.post(case.endpoint, content=content, headers=headers)
    return client.post(case.endpoint, content=case.body, headers=headers)


def assert_refused(response: httpx.Response, expect: Refused) -> None:
    assert response.status_code == expect.status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body
    assert expect.fragment in body["error"], body


def assert_classified(response: httpx.Response, expect: Classified, scores: np.ndarray) -> None:
    """Same top-k labels, in order, with the same probabilities as offline scoring of each image."""
    assert response.status_code == 200, response.text
    body = response.json()
    answers = body.get("results", [body])  # a batch answer, or one image's
    assert len(answers) == len(expect.images), body
    for index, (answer, row) in enumerate(zip(answers, scores, strict=True)):
        predictions = answer["predictions"]
        assert len(predictions) == min(expect.top_k, len(CLASSES)), (index, predictions)
        assert predictions[0]["label"] == CLASSES[int(row.argmax())], (index, predictions, row)
        served = [p["probability"] for p in predictions]
        offline = [row[CLASSES.index(p["label"])] for p in predictions]
        np.testing.assert_allclose(served, offline, atol=1e-5, err_msg=f"image {index}")
        assert served == sorted(served, reverse=True), predictions


def test_corpus_covers_the_required_kinds():
    refused = [case for case in CORPUS.values() if isinstance(case.expect, Refused)]
    statuses = {case.expect.status for case in refused}
    assert len(CORPUS) >= 25 and len(refused) >= 25, len(CORPUS)
    assert {400, 413, 415, 422} <= statuses
    assert all(400 <= case.expect.status < 500 for case in refused)
    assert {"valid_jpeg_cmyk", "valid_gif_animated", "bad_bomb_png_header", "bad_svg_as_png"} <= set(CORPUS)


@pytest.mark.parametrize("name", list(CORPUS))
def test_case(client: httpx.Client, offline: Scorer, name: str):
    case = CORPUS[name]
    response = send(client, case)
    assert response.status_code < 500, (case.summary, response.status_code, response.text)
    if isinstance(case.expect, Refused):
        assert_refused(response, case.expect)
    else:
        assert_classified(response, case.expect, offline(case.expect.images))


def test_service_answers_normally_after_the_corpus(client: httpx.Client, corpus_server, offline: Scorer):
    """Runs after the cases: the worker is alive, ready, error-free, and still right."""
    photo = valid_images()["jpeg_baseline"][1]
    answer = client.post("/classify", files={"image": ("cat.jpg", photo)}, data={"top_k": "3"})
    assert_classified(answer, Classified((photo,), 3), offline((photo,)))
    assert client.get("/readyz").status_code == 200
    assert corpus_server.process.poll() is None
    metrics = client.get("/metrics").text
    responses = re.findall(r'bentoml_service_request_total\{[^}]*http_response_code="(\d+)"[^}]*\} ([0-9.]+)', metrics)
    assert responses, metrics[:2000]
    assert all(float(count) == 0 for code, count in responses if code.startswith("5")), responses
    log = corpus_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, corpus_server.log_tail(60)


def test_script_writes_the_corpus(tmp_path: Path):
    """`python -m tests.serving.hostile_uploads OUTDIR`: every body byte for byte, and a manifest naming it."""
    assert main([str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["cases"]}
    assert set(entries) == set(CORPUS)
    for name, case in CORPUS.items():
        assert (tmp_path / entries[name]["body"]).read_bytes() == case.body, name
        assert entries[name]["expect"]["status"] == (case.expect.status if isinstance(case.expect, Refused) else 200)
    valid = entries["valid_png_rgb48"]["expect"]
    assert (tmp_path / valid["same_as_offline_scoring_of"][0]).read_bytes() == valid_images()["png_rgb48"][1]
    assert main([]) == 2
