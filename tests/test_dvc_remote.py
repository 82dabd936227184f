"""Data and models on a DVC remote over the S3 API: moto's S3 server on loopback stands in for the storage.

The flow runs the tiny pipeline with `--push`; a fresh `git clone` then `dvc pull`s and has the trained model
without training: `dvc repro` finds every stage up to date. Credentials are fake and travel in environment
variables, as real ones should; the repository's DVC config holds only the bucket and the endpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.dvc_stage import PushFailed, push
from tests.conftest import PROJECT_ROOT, run_tool, tiny_pipeline_repo
from transferline.cluster.processes import free_port

pytestmark = pytest.mark.slow
BUCKET = "transferline-test"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3-compatible server on 127.0.0.1 (in a thread of this process) with one empty bucket."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAKE_CREDENTIALS.items():
            patch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    server.stop()


def add_s3_remote(repo: Path, endpoint: str) -> None:
    run_tool(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/{repo.name}"], repo)
    run_tool(["dvc", "remote", "modify", "storage", "endpointurl", endpoint], repo)


def commit_all(repo: Path, message: str) -> None:
    run_tool(["git", "add", "-A"], repo)
    run_tool(["git", "commit", "-qm", message], repo)


def stored_keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_pushed_run_is_pulled_by_a_fresh_clone_that_has_nothing_to_retrain(s3_endpoint, tmp_path, monkeypatch):
    endpoint, client = s3_endpoint
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    repo = tiny_pipeline_repo(tmp_path / "repo")
    run_tool(["dvc", "add", "-q", "images"], repo)  # the raw images are DVC data too
    add_s3_remote(repo, endpoint)
    config = (repo / ".dvc" / "config").read_text()
    assert endpoint in config and "testing" not in config  # no credentials in the repository

    flow = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--repo", str(repo), "--no-deploy", "--push"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert flow.returncode == 0, flow.stdout[-3000:] + flow.stderr[-3000:]
    assert "pushed to the DVC remote" in flow.stdout, flow.stdout[-2000:]
    commit_all(repo, "a pushed run")
    assert len(stored_keys(client, "repo/")) >= 10  # images, prepared data, model, export, ...
    assert "Everything is up to date" in run_tool(["dvc", "push"], repo).stdout  # the flow pushed it all

    clone = tmp_path / "clone"
    run_tool(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models" / "model.pt").exists()
    run_tool(["dvc", "pull"], clone)
    assert (clone / "models" / "model.pt").read_bytes() == (repo / "models" / "model.pt").read_bytes()
    assert (clone / "export" / "model.onnx").read_bytes() == (repo / "export" / "model.onnx").read_bytes()
    repro = run_tool(["dvc", "repro"], clone).stdout
    assert "Running stage" not in repro and "up to date" in repro, repro
    assert "up to date" in run_tool(["dvc", "status"], clone).stdout


def test_push_without_a_reachable_remote_fails_with_the_reason(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run_tool(["git", "init", "-q"], repo)
    run_tool(["dvc", "init", "-q"], repo)
    (repo / "data.txt").write_text("some data\n")
    run_tool(["dvc", "add", "-q", "data.txt"], repo)
    with pytest.raises(PushFailed, match=r"dvc push failed \(exit \d+\): .*remote"):
        push(repo, lambda _line: None)
