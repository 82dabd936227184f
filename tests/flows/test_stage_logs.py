"""What a flow's stage task logs: each stage's own summary and warnings, not third-party chatter."""

from __future__ import annotations

import pytest

from flows.dvc_stage import GitHintFilter, repro_stage
from tests.conftest import tiny_pipeline_repo

pytestmark = pytest.mark.slow

UP_TO_EXPORT = ("ingest", "prepare", "train", "evaluate", "export")


def test_a_stage_log_has_its_summary_but_no_onnx_passes_or_git_hints(tmp_path):
    repo = tiny_pipeline_repo(tmp_path / "repo")
    info: dict[str, list[str]] = {}
    debug: dict[str, list[str]] = {}
    for stage in UP_TO_EXPORT:
        info[stage], debug[stage] = [], []
        outcome = repro_stage(stage, repo, info[stage].append, debug=debug[stage].append)
        assert outcome.ran, "\n".join(info[stage])

    export_log = "\n".join(info["export"])
    assert "Running stage 'export'" in export_log
    assert "transferline.export INFO exported opset" in export_log  # the stage's own summary
    assert "initializer" not in export_log.lower()  # the ONNX exporter's de-duplication passes
    assert "onnx_ir" not in export_log and "onnxscript" not in export_log
    for stage, lines in info.items():
        text = "\n".join(lines)
        assert "git add" not in text and "autostage" not in text, stage
        assert all(line.strip() for line in lines), stage  # blank lines are debug output too
    # DVC did print its hints: they went to debug, they were not lost by accident
    hints = "\n".join(debug["export"])
    assert "To track the changes with git, run:" in hints
    assert any(line.startswith("\tgit add ") and "dvc.lock" in line for line in debug["export"])
    assert "dvc config core.autostage true" in hints


def test_git_hint_filter_keeps_stage_lines_around_a_hint():
    lines = [
        "Running stage 'gate':",
        "> python -m stages.gate",
        "",
        "To track the changes with git, run:",
        "",
        "\tgit add dvc.lock",
        "",
        "To enable auto staging, run:",
        "",
        "\tdvc config core.autostage true",
        "Updating lock file 'dvc.lock'",
    ]
    hints = GitHintFilter()
    kept = [line for line in lines if not hints.is_hint(line)]
    assert kept == ["Running stage 'gate':", "> python -m stages.gate", "Updating lock file 'dvc.lock'"]
