"""The prediction service end to end: a real `bentoml serve` on loopback, real HTTP, a real ONNX model."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from flows.local_server import running_server
from tests.serving import images
from tests.serving.conftest import CLASSES, PROJECT_ROOT, ServingModels, server_env

pytestmark = pytest.mark.slow

MAX_IMAGE_BYTES = 2_000_000
MAX_IMAGE_PIXELS = 2_000_000
MAX_REQUEST_IMAGES = 12


@pytest.fixture(scope="module")
def server(serving_models: ServingModels, tmp_path_factory: pytest.TempPathFactory):
    env = server_env(
        serving_models.home,
        max_image_bytes=str(MAX_IMAGE_BYTES),
        max_image_pixels=str(MAX_IMAGE_PIXELS),
        max_request_images=str(MAX_REQUEST_IMAGES),
    )
    with running_server(PROJECT_ROOT, tmp_path_factory.mktemp("serve") / "serve.log", env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return images.accepted_images()


@pytest.fixture(scope="module")
def offline(serving_models: ServingModels, photos: dict[str, bytes], tmp_path_factory) -> dict[str, np.ndarray]:
    """Probabilities from ONNX Runtime in this process, through transferline.evaluation.scoring, on the same files."""
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.evaluation.onnx_classifier import OnnxClassifier
    from transferline.evaluation.scoring import load_pixels

    folder = tmp_path_factory.mktemp("offline")
    paths = []
    for name, data in photos.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    spec = PreprocessSpec.from_dict(json.loads((serving_models.export_dir / "preprocess.json").read_text()))
    classifier = OnnxClassifier.open(serving_models.export_dir / "model.onnx", CLASSES, spec)
    probabilities = classifier.probabilities(load_pixels(paths, spec), batch_size=64)
    return {path.name: row for path, row in zip(paths, probabilities, strict=True)}


def as_vector(predictions: list[dict]) -> np.ndarray:
    vector = np.zeros(len(CLASSES))
    for item in predictions:
        vector[CLASSES.index(item["label"])] = item["probability"]
    return vector


def assert_error(response: httpx.Response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert fragment in body["error"], body
    return body


def test_probes_and_lineage(client, serving_models: ServingModels):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    answer = client.post("/classify", files={"image": ("cat.jpg", images.accepted_images()["cat.jpg"])}).json()
    assert answer["model_tag"] == serving_models.v1
    assert answer["data_version"] == "data-v1"


def test_classify_multipart_top_k_and_probabilities(client, photos):
    default = client.post("/classify", files={"image": ("cat.jpg", photos["cat.jpg"])}).json()
    assert len(default["predictions"]) == len(CLASSES)  # default top_k 5, capped at the 3 classes
    full = client.post("/classify", files={"image": ("cat.jpg", photos["cat.jpg"])}, data={"top_k": "3"}).json()
    probabilities = [p["probability"] for p in full["predictions"]]
    assert {p["label"] for p in full["predictions"]} == set(CLASSES)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
    assert probabilities == sorted(probabilities, reverse=True)
    one = client.post("/classify", files={"image": ("cat.jpg", photos["cat.jpg"])}, data={"top_k": "1"}).json()
    assert one["predictions"] == full["predictions"][:1]


def test_classify_base64_matches_multipart(client, photos):
    multipart = client.post("/classify", files={"image": ("coffee.png", photos["coffee.png"])}).json()
    encoded = base64.b64encode(photos["coffee.png"]).decode()
    as_json = client.post("/classify", json={"image_b64": encoded}).json()
    data_url = client.post("/classify", json={"image_b64": f"data:image/png;base64,{encoded}", "top_k": 2}).json()
    assert as_json == multipart
    assert data_url["predictions"] == multipart["predictions"][:2]


def test_batch_multipart_and_json_keep_order(client, photos):
    names = ["cat.jpg", "coffee.png", "rocket.bmp"]
    multipart = client.post(
        "/classify_batch", files=[("images", (name, photos[name])) for name in names], data={"top_k": "3"}
    ).json()
    as_json = client.post(
        "/classify_batch", json={"images_b64": [base64.b64encode(photos[n]).decode() for n in names], "top_k": 3}
    ).json()
    assert multipart["data_version"] == "data-v1" and multipart["model_tag"]
    assert len(multipart["results"]) == len(names)
    assert multipart == as_json
    for name, result in zip(names, multipart["results"], strict=True):
        single = client.post("/classify", files={"image": (name, photos[name])}, data={"top_k": "3"}).json()
        np.testing.assert_allclose(as_vector(result["predictions"]), as_vector(single["predictions"]), atol=1e-6)


def test_preprocessing_identical_to_offline_scoring(client, photos, offline):
    """Every accepted kind of file (CMYK, 16-bit, grey, RGBA, palette, EXIF-rotated, ...) gets the same answer
    from the service as from ONNX Runtime in-process through transferline.evaluation.scoring."""
    names = list(photos)
    batch = client.post(
        "/classify_batch", files=[("images", (n, photos[n])) for n in names], data={"top_k": str(len(CLASSES))}
    )
    assert batch.status_code == 200, batch.text
    for name, result in zip(names, batch.json()["results"], strict=True):
        served = as_vector(result["predictions"])
        assert served.argmax() == offline[name].argmax(), name
        np.testing.assert_allclose(served, offline[name], atol=1e-5, err_msg=name)
    for name in names:
        single = client.post("/classify", json={"image_b64": base64.b64encode(photos[name]).decode(), "top_k": 1})
        assert single.status_code == 200, (name, single.text)
        assert single.json()["predictions"][0]["label"] == CLASSES[offline[name].argmax()], name
    top1 = {CLASSES[offline[name].argmax()] for name in names}
    assert len(top1) > 1, "the test model should not give every image the same label"


def test_exif_orientation_is_applied(client):
    """The same picture, stored rotated with an EXIF tag, is classified like the upright one."""
    from PIL import Image

    upright = images.photo("astronaut").crop((0, 0, 512, 300))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = images.encode(stored, "PNG", exif=exif)
    plain = images.encode(upright, "PNG")
    no_tag = images.encode(stored, "PNG")
    answers = [
        as_vector(client.post("/classify", files={"image": ("x.png", data)}, data={"top_k": "3"}).json()["predictions"])
        for data in (tagged, plain, no_tag)
    ]
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-6)
    assert not np.allclose(answers[0], answers[2], atol=1e-3), "rotation should change this model's answer"


def test_concurrent_requests_get_their_own_answers(server, photos, offline):
    """Many requests at once (batched together inside the service) each get the answer for their image."""
    names = list(photos) * 3

    async def post_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            responses = await asyncio.gather(
                *(http.post("/classify", files={"image": (n, photos[n])}, data={"top_k": "3"}) for n in names)
            )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json() for r in responses]

    for name, answer in zip(names, asyncio.run(post_all()), strict=True):
        np.testing.assert_allclose(as_vector(answer["predictions"]), offline[name], atol=1e-5, err_msg=name)


def test_metadata_get_and_post(client, serving_models: ServingModels):
    got = client.get("/metadata").json()
    posted = client.post("/metadata").json()
    assert got == posted
    assert got["model_tag"] == serving_models.v1
    assert got["classes"] == CLASSES
    assert got["data_version"] == "data-v1"
    assert got["provider"] == "CPUExecutionProvider"
    assert got["input"]["shape"] == ["N", 3, 32, 32]
    assert got["input"]["preprocess"]["image_size"] == 32
    assert got["gate_decision"]["passed"] is True
    assert got["gate_decision"]["champion"] is None  # kept from decision.json, although the store drops nulls
    assert got["metrics"]["accuracy"] == pytest.approx(0.9)
    assert got["git_commit"] == "unknown"  # the lineage workdir is not a git repository
    assert got["registered_at"] and got["promoted_at"] >= got["registered_at"]
    assert got["input"]["max_request_images"] == MAX_REQUEST_IMAGES
    assert got["serving"]["batching"] is True


BAD_SINGLE = {
    "not an image": (
        lambda: {"files": {"image": ("a.jpg", b"this is text, not pixels" * 10)}},
        415,
        "not a recognised",
    ),
    "truncated": (lambda: {"files": {"image": ("a.jpg", images.truncated_jpeg())}}, 422, "truncated"),
    "empty file": (lambda: {"files": {"image": ("a.jpg", b"")}}, 400, "empty file"),
    "empty body": (lambda: {"content": b""}, 400, "empty request body"),
    "empty json body": (lambda: {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
    "file above byte limit": (lambda: {"files": {"image": ("n.png", images.noise_png(860, 860))}}, 413, "bytes"),
    "body above byte limit": (lambda: {"files": {"image": ("n.png", images.noise_png(1400, 1400))}}, 413, "body"),
    "above pixel limit": (lambda: {"files": {"image": ("f.png", images.flat_png(2000, 1500))}}, 413, "pixels"),
    "decompression bomb": (
        lambda: {"files": {"image": ("bomb.png", images.png_header_only(60000, 60000))}},
        413,
        "limit",
    ),
    "wrong file field": (lambda: {"files": {"img": ("a.jpg", images.truncated_jpeg())}}, 400, "unknown field 'img'"),
    "wrong json key": (lambda: {"json": {"image": "aGVsbG8="}}, 400, "unknown field 'image'"),
    "bad base64": (lambda: {"json": {"image_b64": "not*base64!"}}, 400, "not valid base64"),
    "base64 of non-image": (lambda: {"json": {"image_b64": "aGVsbG8gd29ybGQ="}}, 415, "not a recognised"),
    "image_b64 not a string": (lambda: {"json": {"image_b64": 42}}, 422, "base64 string"),
    "json not an object": (lambda: {"json": ["x"]}, 400, "must be an object"),
    "invalid json": (lambda: {"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    "deeply nested json": (
        lambda: {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
        400,
        "JSON",
    ),
    "top_k too large": (lambda: {"json": {"image_b64": "aGVsbG8=", "top_k": 99}}, 422, "top_k"),
    "top_k not a number": (lambda: {"files": {"image": ("a", b"x")}, "data": {"top_k": "many"}}, 422, "top_k"),
    "text instead of file": (lambda: {"data": {"image": "cat.jpg"}, "files": {"x": ("x", b"")}}, 400, "field"),
    "two files on /classify": (
        lambda: {"files": [("image", ("a.jpg", b"1")), ("image", ("b.jpg", b"2"))]},
        400,
        "classify_batch",
    ),
    "unsupported content type": (lambda: {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content"),
    "multipart without boundary": (
        lambda: {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
        "multipart",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SINGLE))
def test_bad_input_gets_a_precise_4xx(client, case):
    make, status, fragment = BAD_SINGLE[case]
    assert_error(client.post("/classify", **make()), status, fragment)


def test_bad_batches(client, photos):
    too_many = [("images", (f"{i}.jpg", photos["cat.jpg"])) for i in range(MAX_REQUEST_IMAGES + 1)]
    assert_error(client.post("/classify_batch", files=too_many), 413, "too many images")
    encoded = base64.b64encode(photos["cat.jpg"]).decode()
    body = assert_error(
        client.post("/classify_batch", json={"images_b64": [encoded] * (MAX_REQUEST_IMAGES + 1)}), 413, "too many"
    )
    assert body["detail"] == {"limit": MAX_REQUEST_IMAGES}
    mixed = [("images", ("ok.jpg", photos["cat.jpg"])), ("images", ("bad.jpg", b"not an image"))]
    body = assert_error(client.post("/classify_batch", files=mixed), 415, "1 of 2 images rejected; image 1")
    assert body["detail"] == [{"index": 1, "reason": "not a recognised image format", "status": 415}]
    assert_error(client.post("/classify_batch", json={"images_b64": "abc"}), 422, "list of base64")
    assert_error(client.post("/classify_batch", files={"image": ("a.jpg", photos["cat.jpg"])}), 400, "unknown field")


def test_service_survives_bad_input_and_never_answers_500(client, photos):
    for make, _, _ in BAD_SINGLE.values():
        client.post("/classify", **make())
    ok = client.post("/classify", files={"image": ("cat.jpg", photos["cat.jpg"])})
    assert ok.status_code == 200
    metrics = client.get("/metrics").text
    server_errors = re.findall(
        r'bentoml_service_request_total\{[^}]*http_response_code="5\d\d"[^}]*\} ([0-9.]+)', metrics
    )
    assert server_errors and all(float(value) == 0 for value in server_errors)
    assert re.search(r'transferline_rejected_requests_total\{endpoint="classify",status="415"\} [1-9]', metrics)


def test_metrics_count_images_per_model_run(client, photos):
    before = client.get("/metrics").text
    files = [("images", (f"{i}.jpg", photos["cat.jpg"])) for i in range(5)]
    assert client.post("/classify_batch", files=files).status_code == 200
    after = client.get("/metrics").text

    def value(text: str, series: str) -> float:
        return float(re.search(re.escape(series) + r" ([0-9.e+]+)", text).group(1))

    assert value(after, "transferline_batch_images_sum") - value(before, "transferline_batch_images_sum") >= 5
    assert re.search(r'transferline_model_info\{[^}]*provider="CPUExecutionProvider"[^}]*\} 1', after)


def test_openapi_document(client):
    spec = client.get("/docs.json").json()
    assert {"/classify", "/classify_batch", "/metadata", "/readyz", "/metrics"} <= set(spec["paths"])
    single = spec["paths"]["/classify"]["post"]
    fields = single["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert fields["image"]["format"] == "binary" and set(fields) == {"image", "top_k"}
    payload = single["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(payload) == {"image_b64", "top_k"}  # base64 goes in the JSON body; the form refuses it
    answer = single["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"model_tag", "data_version", "predictions"} <= set(answer["required"])
    batch = spec["paths"]["/classify_batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert batch["properties"]["images"]["type"] == "array"


def test_bentoml_python_client(server, photos, tmp_path: Path):
    """The documented BentoML client call works against the service."""
    import bentoml

    image = tmp_path / "cat.jpg"
    image.write_bytes(photos["cat.jpg"])
    with bentoml.SyncHTTPClient(server.url) as bento_client:
        answer = bento_client.classify(image=image, top_k=2)
        batch = bento_client.classify_batch(images=[image, image])
    assert len(answer["predictions"]) == 2
    assert len(batch["results"]) == 2


def test_command_line_client(server, photos, serving_models: ServingModels, tmp_path: Path):
    import subprocess
    import sys

    for name in ("cat.jpg", "coffee.png"):
        (tmp_path / name).write_bytes(photos[name])
    (tmp_path / "notes.txt").write_text("not an image")

    def client_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serving.client", *args, "--url", server.url],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
        )

    single = client_cli(str(tmp_path / "cat.jpg"), "--top-k", "2")
    assert single.returncode == 0, single.stderr
    assert f"model {serving_models.v1}, trained on data data-v1" in single.stdout
    assert len([line for line in single.stdout.splitlines() if line.startswith("  ")]) == 2
    batch = client_cli(str(tmp_path / "cat.jpg"), str(tmp_path / "coffee.png"), "--json")
    assert len(json.loads(batch.stdout)["results"]) == 2
    refused = client_cli(str(tmp_path / "notes.txt"))
    assert refused.returncode == 2
    assert "/classify answered 415: image rejected: not a recognised image format" in refused.stderr


def test_mutated_files_never_cause_a_server_error(client, photos):
    """Real files of six formats with random bytes overwritten: each answer is 200 or a JSON 4xx."""
    small = images.photo("chelsea").resize((64, 48))
    seeds = {
        fmt: images.encode(small if fmt != "TIFF" else small.convert("CMYK"), fmt)
        for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
    }
    rng = np.random.default_rng(7)
    statuses = []
    for fmt, original in seeds.items():
        for _ in range(20):
            mutated = bytearray(original)
            for position in rng.integers(0, min(len(mutated), 200), size=rng.integers(1, 6)):
                mutated[position] = int(rng.integers(0, 256))
            response = client.post("/classify", files={"image": (f"x.{fmt.lower()}", bytes(mutated))})
            statuses.append(response.status_code)
            assert response.status_code == 200 or set(response.json()) == {"error", "detail"}, (fmt, response.text)
    assert all(status == 200 or 400 <= status < 500 for status in statuses), statuses
    assert any(status != 200 for status in statuses)  # the mutations did break some files


def test_every_answer_carries_the_calibrated_ood_flag(client, photos, serving_models: ServingModels, tmp_path: Path):
    """The score is the energy of the model's logits, computed offline on the same files; the flag is the
    score against the threshold the bundle's monitoring.json carries."""
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.evaluation.onnx_classifier import OnnxClassifier
    from transferline.evaluation.scoring import load_pixels
    from transferline.monitoring.ood import load_detector

    detector = load_detector(serving_models.export_dir)
    assert detector.calibration_images > 0
    spec = PreprocessSpec.from_dict(json.loads((serving_models.export_dir / "preprocess.json").read_text()))
    classifier = OnnxClassifier.open(serving_models.export_dir / "model.onnx", CLASSES, spec)
    names = sorted(photos)[:6]
    for name in names:
        (tmp_path / name).write_bytes(photos[name])
    expected_scores, expected_flags = detector.flags(
        classifier.logits(load_pixels([tmp_path / n for n in names], spec))
    )
    batch = client.post("/classify_batch", files=[("images", (n, photos[n])) for n in names]).json()
    for result, score, flag in zip(batch["results"], expected_scores, expected_flags, strict=True):
        assert result["ood_score"] == pytest.approx(score, abs=1e-4)
        assert result["out_of_distribution"] is bool(flag)
    single = client.post("/classify", files={"image": (names[0], photos[names[0]])}).json()
    assert single["ood_score"] == pytest.approx(expected_scores[0], abs=1e-4)
    ood = client.get("/metadata").json()["out_of_distribution"]
    assert ood["calibrated"] is True and ood["threshold"] == detector.threshold


def test_the_page_and_the_model_card_are_served(client, serving_models: ServingModels):
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>transferline classifier</title>" in page.text
    card = client.get("/model-card")
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text == (serving_models.passed_gate / "model_card.md").read_text()


def test_every_answered_image_is_logged_off_the_request_path(client, photos, serving_models: ServingModels):
    """The prediction log: one entry per image with the model, top labels, the OOD score and the logits as
    embedding (whose energy is that score); never the image itself by default."""
    import time as clock

    from serving.prediction_log import read_entries, summarize

    log_dir = serving_models.home / "predictions"
    names = sorted(photos)[:3]
    sent_at = clock.time()  # earlier tests' entries may still be on their way to the file: told apart by time

    def entries_since() -> list[dict]:
        return [entry for entry in read_entries(log_dir) if entry["time"] >= sent_at] if log_dir.is_dir() else []

    answer = client.post("/classify_batch", files=[("images", (n, photos[n])) for n in names]).json()
    deadline = clock.monotonic() + 10
    while clock.monotonic() < deadline and len(entries_since()) < 3:
        clock.sleep(0.1)
    entries = entries_since()
    assert len(entries) == 3
    for entry, result, name in zip(entries, answer["results"], names, strict=True):
        assert entry["model_tag"] == answer["model_tag"] and entry["request_bytes"] == len(photos[name])
        assert entry["labels"][0] == result["predictions"][0]["label"]
        assert entry["ood_score"] == pytest.approx(result["ood_score"], abs=1e-4)
        logits = np.array(entry["embedding"])
        assert len(logits) == len(CLASSES)
        assert -np.log(np.exp(logits).sum()) == pytest.approx(entry["ood_score"], abs=1e-3)
        assert "image_b64" not in entry
    assert summarize(entries)["models"][answer["model_tag"]]["predictions"] == 3
