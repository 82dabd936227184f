"""Swapping the model of a running `bentoml serve` (2 workers) under load: no failed request, tags in order.

One real service for the module, started with the champion v1 and a bearer token; the store also holds
`other` (a different MobileNetV2: its answers differ from v1's, so a tag that names the wrong model
shows), a bundle whose model.onnx is truncated, and one whose classes.json does not match its graph.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.swap_bench import SteadyClients, tag_order_violations, timed_swap
from flows.local_server import running_server
from serving.swap_client import follow_champion
from tests.serving.conftest import (
    CLASSES,
    IMAGE_SIZE,
    PROJECT_ROOT,
    QUIET,
    ServingModels,
    copy_home,
    registry_cli,
    server_env,
)
from tests.serving.images import encode, photo

pytestmark = pytest.mark.slow

TOKEN = "swap-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 32
PHASE_S = 2.0


@dataclass(frozen=True)
class SwapModels:
    home: Path
    v1: str  # the champion the service starts with
    other: str  # another model: different weights, so different answers
    corrupt: str  # model.onnx truncated
    mismatched: str  # classes.json lists 4 classes, the graph gives 3


def register_exports(home: Path, exports: dict[str, Path], gate: Path) -> dict[str, str]:
    """Register each export directory (as if it had passed its gate) in one subprocess; name -> tag."""
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom serving.registry import register\n"
        "exports = json.loads(sys.argv[1])\n"
        "print(json.dumps({name: register(Path(path), Path(sys.argv[2]), {'data_version': 'data-' + name})"
        " for name, path in exports.items()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps({k: str(v) for k, v in exports.items()}), str(gate)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **QUIET, "BENTOML_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def swap_models(serving_models: ServingModels, tmp_path_factory: pytest.TempPathFactory) -> SwapModels:
    import shutil

    from bench.synthetic_bundle import mobilenet_v2, write_export_dir

    root = tmp_path_factory.mktemp("swap-models")
    home = copy_home(serving_models, root / "bentoml")
    other = root / "other"
    write_export_dir(mobilenet_v2(len(CLASSES), seed=1, image_size=IMAGE_SIZE), CLASSES, IMAGE_SIZE, other)
    corrupt = root / "corrupt"
    shutil.copytree(serving_models.export_dir, corrupt)
    (corrupt / "model.onnx").write_bytes((corrupt / "model.onnx").read_bytes()[:1000])
    mismatched = root / "mismatched"
    shutil.copytree(serving_models.export_dir, mismatched)
    (mismatched / "classes.json").write_text(json.dumps({"classes": [*CLASSES, "extra"]}))
    tags = register_exports(
        home, {"other": other, "corrupt": corrupt, "mismatched": mismatched}, serving_models.passed_gate
    )
    return SwapModels(home, serving_models.v1, tags["other"], tags["corrupt"], tags["mismatched"])


@pytest.fixture(scope="module")
def server(swap_models: SwapModels, tmp_path_factory: pytest.TempPathFactory):
    env = {**server_env(swap_models.home, workers="2"), "TRANSFERLINE_API_TOKEN": TOKEN}
    with running_server(PROJECT_ROOT, tmp_path_factory.mktemp("serve") / "serve.log", env) as running:
        deadline = time.monotonic() + 90  # /readyz answers once one worker is ready; wait for both
        while any(w["state"] == "unknown" for w in status(running.url)["workers"]):
            assert time.monotonic() < deadline, status(running.url)
            time.sleep(0.2)
        yield running


@pytest.fixture
def token_env(monkeypatch):
    """This process's clients (serving.swap_client) send the token, as the service requires it."""
    monkeypatch.setenv("TRANSFERLINE_API_TOKEN", TOKEN)


def small_jpeg() -> bytes:
    return encode(photo("chelsea").resize((64, 48)), "JPEG", quality=90)


def status(url: str) -> dict:
    response = httpx.get(f"{url}/admin/status", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def assert_every_worker_serves(url: str, tag: str) -> None:
    found = status(url)
    assert [w["tag"] for w in found["workers"]] == [tag, tag], found["workers"]
    assert found["consistent"] is True
    answer = httpx.post(f"{url}/classify", files={"image": ("cat.jpg", small_jpeg())}, headers=AUTH, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_tag"] == tag


def test_32_clients_through_a_swap_and_a_rollback_get_no_error_and_tags_in_order(
    server, swap_models: SwapModels, token_env
):
    assert_every_worker_serves(server.url, swap_models.v1)
    with SteadyClients(server.url, small_jpeg(), CLIENTS, AUTH) as clients:
        time.sleep(PHASE_S)
        deploy = timed_swap(server.url, swap_models.other, swap_models.v1)
        time.sleep(PHASE_S)
        rollback = timed_swap(server.url, swap_models.v1, swap_models.other)
        time.sleep(PHASE_S)
    answers = clients.answers
    failed = [a for a in answers if not a.ok]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, statuses {sorted({a.status for a in failed})}"
    assert tag_order_violations(answers, swap_models.v1, [deploy, rollback]) == []
    for swap, tag in ((deploy, swap_models.other), (rollback, swap_models.v1)):
        assert swap.report["model_tag"] == tag and len(swap.report["workers"]) == 2
        assert {(w["tag"], w["state"]) for w in swap.report["workers"]} == {(tag, "serving")}
    between = [a for a in answers if deploy.done < a.start and a.end < rollback.sent]
    after = [a for a in answers if a.start > rollback.done]
    assert between and after and len({a.client for a in answers}) == CLIENTS
    assert {a.tag for a in between} == {swap_models.other} and {a.tag for a in after} == {swap_models.v1}
    # each tag names the model that computed the answer: one top prediction per tag, and the two differ
    tops = {tag: {(a.top[0], round(a.top[1], 4)) for a in answers if a.tag == tag} for tag in (deploy.old, deploy.new)}
    assert all(len(found) == 1 for found in tops.values()), tops
    assert tops[swap_models.v1] != tops[swap_models.other]
    assert_every_worker_serves(server.url, swap_models.v1)


def swap_request(url: str, body: object, headers: dict | None = AUTH) -> httpx.Response:
    return httpx.post(f"{url}/admin/swap", json=body, headers=headers, timeout=90)


def test_a_swap_that_cannot_be_served_is_refused_precisely_and_the_old_model_keeps_serving(
    server, swap_models: SwapModels
):
    generation = (status(server.url)["swap"] or {}).get("generation")
    cases = [
        ({"tag": "transferline-classifier:nope"}, 404, "no model 'transferline-classifier:nope' in the BentoML model"),
        ({"tag": "resnet:1"}, 404, "'resnet:1' is not a transferline-classifier model"),
        ({"tag": swap_models.corrupt}, 422, "ONNX Runtime cannot load model.onnx"),
        ({"tag": swap_models.mismatched}, 422, "but classes.json lists 4 classes"),
        ({"tag": ""}, 400, "malformed swap request"),
        (["not", "an", "object"], 400, "malformed swap request"),
    ]
    for body, code, fragment in cases:
        response = swap_request(server.url, body)
        assert response.status_code == code, (body, response.text)
        assert fragment in response.json()["error"], response.json()
        if code != 400:
            assert response.json()["error"].endswith(f"still serving {swap_models.v1}")
    assert "Protobuf parsing failed" in swap_request(server.url, {"tag": swap_models.corrupt}).json()["error"]
    unauthorised = swap_request(server.url, {"tag": swap_models.other}, headers=None)
    assert unauthorised.status_code == 401 and unauthorised.json()["error"] == "missing bearer token"
    assert httpx.get(f"{server.url}/admin/status", timeout=10).status_code == 401
    assert (status(server.url)["swap"] or {}).get("generation") == generation  # no worker was even asked
    assert_every_worker_serves(server.url, swap_models.v1)


def test_a_worker_restarted_after_a_swap_comes_back_with_the_swapped_model(server, swap_models: SwapModels):
    assert swap_request(server.url, {"tag": swap_models.other}).status_code == 200
    try:
        victim = status(server.url)["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with_new_pid = [w for w in status(server.url)["workers"] if w["worker"] == victim["worker"]]
            if with_new_pid[0]["state"] != "unknown" and with_new_pid[0]["pid"] != victim["pid"]:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"worker {victim['worker']} did not come back: {status(server.url)}")
        assert with_new_pid[0]["tag"] == swap_models.other
        assert_every_worker_serves(server.url, swap_models.other)
    finally:
        assert swap_request(server.url, {"tag": swap_models.v1}).status_code == 200
    assert_every_worker_serves(server.url, swap_models.v1)


def test_registry_promote_and_rollback_swap_the_running_service(
    server, swap_models: SwapModels, token_env, tmp_path: Path
):
    service = {"TRANSFERLINE_SERVE_PORT": str(server.port), "TRANSFERLINE_API_TOKEN": TOKEN}
    promoted = registry_cli(swap_models.home, "promote", swap_models.other, env=service).stdout
    assert f"champion: {swap_models.other}" in promoted
    assert f"swapped from {swap_models.v1} to {swap_models.other} in 2 worker(s)" in promoted
    assert_every_worker_serves(server.url, swap_models.other)
    rolled_back = registry_cli(swap_models.home, "rollback", env=service).stdout
    assert f"swapped from {swap_models.other} to {swap_models.v1} in 2 worker(s)" in rolled_back
    assert_every_worker_serves(server.url, swap_models.v1)
    # a service on another model store (another checkout's) is left alone
    elsewhere = follow_champion(swap_models.other, server.url, tmp_path / "another-store")
    assert "serves another model store" in elsewhere and "not swapped" in elsewhere
    assert_every_worker_serves(server.url, swap_models.v1)
