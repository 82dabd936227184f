"""The served model answers every test image as the offline evaluation did: a model the pipeline trained
(`dvc repro` on tiny data), registered and promoted by the registry, behind a real `bentoml serve`."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pytest

from flows.local_server import running_server
from tests.serving.conftest import PROJECT_ROOT, registry_cli, server_env

pytestmark = pytest.mark.slow

# smaller than the tiny test split, so that the split goes out in several /classify_batch requests
MAX_REQUEST_IMAGES = 3


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def evaluated_test_images(repo: Path) -> list[tuple[Path, str]]:
    """(raw file, top-1 label) for every test image, as the evaluate stage predicted it.

    The evaluate stage's confusion plot has one row per test image, in the order of the prepared pixel
    cache, which is the manifest's order of test rows; each row's true label must match to prove it.
    """
    test_rows = [row for row in read_csv(repo / "data" / "prepared" / "manifest.csv") if row["split"] == "test"]
    predictions = read_csv(repo / "plots" / "evaluate" / "confusion.csv")
    assert len(predictions) == len(test_rows) > MAX_REQUEST_IMAGES
    assert [p["actual"] for p in predictions] == [row["label"] for row in test_rows], "rows out of order"
    raw = repo / "data" / "raw"
    return [(raw / row["path"], p["predicted"]) for row, p in zip(test_rows, predictions, strict=True)]


@pytest.fixture(scope="module")
def served_pipeline_model(trained_tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The trained tiny pipeline's export, registered and promoted in a BentoML home of its own, served."""
    home = tmp_path_factory.mktemp("pipeline-model") / "bentoml"
    repo = trained_tiny_pipeline
    out = registry_cli(
        home, "register", "--export-dir", str(repo / "export"), "--gate-dir", str(repo / "gate"), cwd=repo
    ).stdout
    tag = out.strip().splitlines()[-1]
    registry_cli(home, "promote", tag)
    env = server_env(home, max_request_images=str(MAX_REQUEST_IMAGES), workers="1")
    with running_server(PROJECT_ROOT, home.parent / "serve.log", env) as server:
        yield server, tag


def test_served_top1_equals_the_evaluate_stage_for_every_test_image(trained_tiny_pipeline, served_pipeline_model):
    server, tag = served_pipeline_model
    expected = evaluated_test_images(trained_tiny_pipeline)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        limit = client.get("/metadata").json()["input"]["max_request_images"]
        assert limit == MAX_REQUEST_IMAGES
        answers = []
        for start in range(0, len(expected), limit):
            chunk = expected[start : start + limit]
            files = [("images", (path.name, path.read_bytes())) for path, _ in chunk]
            response = client.post("/classify_batch", files=files, data={"top_k": "1"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_tag"] == tag
            answers += body["results"]
    assert len(answers) == len(expected)
    served = [answer["predictions"][0]["label"] for answer in answers]
    offline = [label for _, label in expected]
    mismatches = [(path.name, s, o) for (path, _), s, o in zip(expected, served, offline, strict=True) if s != o]
    assert not mismatches, f"served vs offline top-1 differ for {mismatches}"
