"""The pipeline flow end to end on tiny data: real DVC stages, Prefect's temporary server, a real service."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from prefect import flow

from flows.dvc_stage import PIPELINE_STAGES
from flows.service_control import ServiceController, controller_from_params
from tests.conftest import bentoml_home_in_process, run_tool, tiny_pipeline_repo

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_params(repo: Path, **sections: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def flow_repo(tmp_path_factory):
    """A git+DVC copy of the project with tiny data and fast, still real, training."""
    root = tmp_path_factory.mktemp("flow")
    repo = tiny_pipeline_repo(root / "repo", serve={"port": free_port(), "workers": 1})
    saved = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
    with bentoml_home_in_process(root / "bentoml"):  # the flow uses the registry in this process
        yield repo
        controller_from_params(repo).stop()
    if saved is None:
        os.environ.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    else:
        os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = saved


def controller(repo: Path) -> ServiceController:
    return controller_from_params(repo)


def run_flow(repo: Path, overrides=None):
    from flows.pipeline import pipeline

    state = pipeline(overrides, str(repo), True, return_state=True)
    return state


def test_first_run_deploys_second_run_skips_degraded_run_keeps_champion(flow_repo):
    from serving.registry import find_champion

    first = run_flow(flow_repo)
    assert first.is_completed(), first.message
    champion = find_champion()
    assert champion is not None and first.message == f"deployed {champion.tag}: service started (nothing was answering)"
    service = controller(flow_repo)
    image = (flow_repo / "images" / "dog" / "img_003.png").read_bytes()
    answer = service.classify(image)
    assert answer["model_tag"] == champion.tag
    assert answer["predictions"][0]["label"] == "dog"
    pid = service.pid()

    run_tool(["git", "add", "-A"], flow_repo)
    run_tool(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "first"], flow_repo)

    second = run_flow(flow_repo)
    assert second.is_completed() and second.message.startswith("unchanged")
    report = json.loads((flow_repo / "gate" / "decision.json").read_text())
    # champion.json, a dep of the gate, now names the deployed model: DVC re-ran the gate,
    # which judged the candidate against itself; nothing was redeployed
    assert report["champion_at_decision"] == champion.tag and report["passed"]
    assert report["champion"]["candidate_only_correct"] == 0 == report["champion"]["champion_only_correct"]
    assert json.loads((flow_repo / "champion.json").read_text())["champion"] == champion.tag
    assert "up to date" in run_tool(["dvc", "status", "gate"], flow_repo).stdout
    lock = yaml.safe_load((flow_repo / "dvc.lock").read_text())
    assert set(PIPELINE_STAGES) <= set(lock["stages"])
    assert service.pid() == pid, "nothing changed, yet the service was restarted"
    assert second.message == f"unchanged: champion {champion.tag} already serves this model (service answered)"

    # the champion is unchanged but nobody serves it: the run notices, starts the service and says so
    service.stop()
    restarted = run_flow(flow_repo)
    assert restarted.is_completed(), restarted.message
    assert restarted.message.endswith("already serves this model (service was not answering: started)")
    assert service.classify(image)["model_tag"] == champion.tag
    pid = service.pid()

    degraded = run_flow(
        flow_repo, {"train.strategy": "full", "train.lr": 50.0, "train.epochs": 1, "train.warmup_epochs": 0}
    )
    assert degraded.is_completed(), degraded.message
    assert degraded.message.startswith(f"gate failed, champion kept ({champion.tag})")
    decision = json.loads((flow_repo / "gate" / "decision.json").read_text())
    assert decision["passed"] is False
    assert find_champion().tag == champion.tag
    assert service.classify(image)["model_tag"] == champion.tag
    assert service.pid() == pid
    diff = json.loads(run_tool(["dvc", "metrics", "diff", "--json"], flow_repo).stdout)
    accuracy = diff["metrics/evaluate.json"]["accuracy"]
    assert accuracy["old"] > accuracy["new"], accuracy  # the degraded params show up as a metrics change


def passed_candidate(repo: Path, export_dir: Path) -> str:
    """Register the export in `export_dir` as a candidate that passed its gate."""
    from serving.registry import register

    decision_file = repo / "gate" / "decision.json"
    decision = json.loads(decision_file.read_text())
    decision_file.write_text(json.dumps({**decision, "passed": True}))
    return register(export_dir, repo / "gate", {"data_version": "test"})


def assert_answers_with(repo: Path, tag: str) -> None:
    """The service at the project's address answers a real prediction, from model `tag`, over HTTP."""
    image = (repo / "images" / "dog" / "img_003.png").read_bytes()
    response = httpx.post(f"{controller(repo).url}/classify", files={"image": ("dog.png", image)}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model_tag"] == tag
    assert response.json()["predictions"][0]["label"] == "dog"
    assert httpx.get(f"{controller(repo).url}/readyz", timeout=5).status_code == 200


def deploy(repo: Path, tag: str):
    from flows import pipeline as pipeline_module

    @flow
    def deploy_only():
        return pipeline_module.deploy_task(tag, str(repo), "127.0.0.1", controller(repo).port)

    return deploy_only(return_state=True)


def test_deploy_swaps_the_model_in_place_and_restarts_only_for_a_code_change(flow_repo):
    """A new champion reaches the live service by a swap (same process, every worker); after a change of the
    service's own code, the next deploy restarts it instead, and says so."""
    from serving.registry import find_champion

    previous = find_champion()
    assert previous is not None, "runs after the end-to-end test"
    pid = controller(flow_repo).pid()
    # the champion's own files (export/ now holds the degraded run's model): the new tag must answer right too
    tag = passed_candidate(flow_repo, previous.path)
    state = deploy(flow_repo, tag)
    assert state.is_completed(), state.message
    assert state.result()["how"].startswith(f"swapped from {previous.tag} in 1 worker(s), no restart")
    assert controller(flow_repo).pid() == pid
    assert find_champion().tag == tag
    assert_answers_with(flow_repo, tag)
    assert [w["tag"] for w in controller(flow_repo).status()["workers"]] == [tag]

    page = flow_repo / "serving" / "ui.html"
    page.write_text(page.read_text() + "\n<!-- changed -->\n")
    newer = passed_candidate(flow_repo, previous.path)
    state = deploy(flow_repo, newer)
    assert state.is_completed(), state.message
    assert state.result()["how"] == "restarted (service code changed since it started)"
    assert controller(flow_repo).pid() != pid
    assert_answers_with(flow_repo, newer)


def test_failed_deploy_rolls_back_to_the_previous_champion(flow_repo, monkeypatch):
    from flows.service_control import ServiceFailed
    from serving.registry import find_champion

    previous = find_champion()
    assert previous is not None, "runs after the end-to-end test"
    pid = controller(flow_repo).pid()
    tag = passed_candidate(flow_repo, flow_repo / "export")
    assert tag != previous.tag

    def broken_classify(self, image, filename="image.png"):
        raise ServiceFailed("probe answered 500")

    monkeypatch.setattr(ServiceController, "classify", broken_classify)
    state = deploy(flow_repo, tag)
    assert state.is_failed()
    assert f"rolled back to {previous.tag}, which is serving (swapped from {tag} in 1 worker(s)" in state.message
    monkeypatch.undo()
    assert find_champion().tag == previous.tag
    assert controller(flow_repo).pid() == pid  # swapped there and back: never restarted
    assert_answers_with(flow_repo, previous.tag)


def test_a_candidate_that_never_gets_ready_is_not_promoted_and_the_champion_serves_throughout(
    flow_repo, monkeypatch, tmp_path
):
    """A candidate whose ONNX file is corrupt: in its preflight service, beside the live one, the workers fail
    to load the model and /readyz never answers 200; the deploy gives up before promoting it, and the live
    service (same process) keeps answering with the champion."""
    import functools
    import shutil

    from flows import pipeline as pipeline_module
    from serving.registry import find_champion

    previous = find_champion()
    assert previous is not None, "runs after the end-to-end test"
    live_pid = controller(flow_repo).pid()
    assert live_pid is not None
    broken_export = tmp_path / "export"
    shutil.copytree(flow_repo / "export", broken_export)
    model = broken_export / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    tag = passed_candidate(flow_repo, broken_export)
    # readiness is given 25 s instead of 120 s: the broken service would never get ready anyway
    monkeypatch.setattr(pipeline_module, "ServiceController", functools.partial(ServiceController, ready_timeout_s=25))

    state = deploy(flow_repo, tag)
    assert state.is_failed()
    assert f"deploy of {tag} failed (candidate service " in state.message
    assert "not ready after 25 s" in state.message or "exited" in state.message, state.message
    assert f"not promoted, champion {previous.tag} keeps serving" in state.message
    assert "Protobuf parsing failed" in (flow_repo / ".transferline" / "service" / "preflight.log").read_text()
    assert find_champion().tag == previous.tag
    assert controller(flow_repo).pid() == live_pid  # never stopped, never restarted
    assert_answers_with(flow_repo, previous.tag)
