"""The tuning flow end to end: parallel Prefect tasks, artifacts, the replay command, --apply-best only on request."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows import tune as tune_flow
from transferline.search.tuning import StudyConfig


def cli_args(config: StudyConfig, *extra: str) -> list[str]:
    return [
        "--space", config.space_file, "--params", config.params_file, "--prepared", config.prepared_dir,
        "--work-dir", config.work_dir, "--sampler", config.sampler, "--trials", str(config.trials), *extra,
    ]  # fmt: skip


def latest_artifact(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
    assert found, f"no artifact {key}"
    return found[0]


@pytest.mark.slow
def test_flow_runs_parallel_trials_reports_them_and_applies_only_on_request(study_config, capsys):
    config = study_config(trials=4, sampler="tpe")
    params_file = Path(config.params_file)
    params_file.write_text("# my comment survives\n" + params_file.read_text())
    before = params_file.read_text()

    assert tune_flow.main(cli_args(config, "--workers", "2")) == 0
    out = capsys.readouterr().out
    assert "replay it through the pipeline:\n  dvc exp run -S 'train.probe_l2=[" in out
    assert params_file.read_text() == before  # never written silently

    table = latest_artifact("tuning-trials")
    rows = yaml.safe_load(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 4 and {row["state"] for row in rows} == {"complete"}
    assert {"number", "params", "val_accuracy", "seconds", "state"} <= set(rows[0])
    history = latest_artifact("tuning-history")
    assert "Optimisation history" in history.data and "dvc exp run" in history.data

    # resuming the finished study runs nothing new, and --apply-best writes the best values
    assert tune_flow.main(cli_args(config, "--apply-best")) == 0
    out = capsys.readouterr().out
    assert "wrote the best trial's values" in out
    written = params_file.read_text()
    assert written.startswith("# my comment survives")
    l2 = yaml.safe_load(written)["train"]["probe_l2"]
    assert isinstance(l2, list) and len(l2) == 1 and 1e-3 <= l2[0] <= 1.0


@pytest.mark.slow
def test_flow_refuses_a_malformed_space_before_any_trial(study_config, capsys):
    config = study_config({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}})
    assert tune_flow.main(cli_args(config)) == 2
    assert "search_space.yaml: train.lr: low (0.1) must be < high (0.01)" in capsys.readouterr().err
    assert not (Path(config.work_dir) / "study.db").exists()
