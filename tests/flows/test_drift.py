"""The drift check on logged predictions: no alarm on a window like the reference, an alarm naming what
moved on a shifted one, a clear "too few" below the window, and the flow end to end against a served
model's registry bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.drift import check_window, report_markdown
from serving.prediction_log import PredictionLog
from transferline.monitoring.reference import build_detector, predicted_class_shares

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def bundle(directory: Path, reference: np.ndarray) -> Path:
    directory.mkdir(parents=True)
    np.save(directory / "reference_logits.npy", reference.astype(np.float32))
    monitoring = {
        "detector": build_detector(reference, 0.05).to_dict(),
        "drift_reference": {"class_shares": predicted_class_shares(reference, reference.shape[1]).tolist()},
    }
    (directory / "monitoring.json").write_text(json.dumps(monitoring))
    return directory


def log(directory: Path, tag: str, logits: np.ndarray, detector_dir: Path) -> None:
    from transferline.monitoring.ood import load_detector

    scores, flags = load_detector(detector_dir).flags(logits)
    writer = PredictionLog(directory, 10_000_000, 1)
    writer.start()
    for row, score, flag in zip(logits, scores, flags, strict=True):
        writer.record(
            {
                "model_tag": tag,
                "embedding": row.tolist(),
                "ood_score": float(score),
                "out_of_distribution": bool(flag),
                "labels": ["a"],
                "time": 0,
            }
        )
    writer.close()


def logits(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    centres = np.eye(4) * 4
    return centres[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, 4)) + shift


def test_a_window_like_the_reference_raises_no_alarm(tmp_path: Path):
    rng = np.random.default_rng(0)
    model = bundle(tmp_path / "bundle", logits(rng, 600))
    log(tmp_path / "log", "m:1", logits(rng, 200), model)
    check = check_window(model, "m:1", tmp_path / "log", 200, 0.05)
    assert check.report is not None and not check.report.drift
    assert check.message.startswith("no drift in the last 200 predictions of m:1")


def test_a_shifted_window_is_drift_and_says_what_moved(tmp_path: Path):
    rng = np.random.default_rng(1)
    model = bundle(tmp_path / "bundle", logits(rng, 600))
    shifted = logits(rng, 200) * 0.4  # flatter logits: less confident, higher energy
    log(tmp_path / "log", "m:1", shifted, model)
    log(tmp_path / "log", "m:0", logits(rng, 50), model)  # an older model's entries are not judged
    check = check_window(model, "m:1", tmp_path / "log", 200, 0.05)
    assert check.report.drift and "embedding_mmd" in check.report.moved and "ood_rate" in check.report.moved
    assert "| embedding_mmd |" in report_markdown(check) and "| yes |" in report_markdown(check)


def test_too_few_predictions_are_not_judged(tmp_path: Path):
    rng = np.random.default_rng(2)
    model = bundle(tmp_path / "bundle", logits(rng, 100))
    log(tmp_path / "log", "m:1", logits(rng, 20), model)
    check = check_window(model, "m:1", tmp_path / "log", 200, 0.05)
    assert check.report is None and check.message == "20 of 200 predictions logged for m:1: too few to judge"


@pytest.mark.slow
def test_the_flow_judges_the_champions_logged_predictions(tmp_path: Path):
    """A real registry with a promoted model (its bundle carries the reference), predictions logged from
    noise far from that reference, and the flow run as its command line, retraining off."""
    from tests.serving.conftest import registry_cli

    home = tmp_path / "bentoml"
    script = (
        "from pathlib import Path\n"
        "from bench.synthetic_bundle import mobilenet_v2, write_export_dir, write_gate_dir\n"
        f"work = Path({str(tmp_path)!r})\n"
        "write_export_dir(mobilenet_v2(3, image_size=32), ['a', 'b', 'c'], 32, work / 'export')\n"
        "write_gate_dir(work / 'gate', True, {'data_version': 'v1'})\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, check=True, capture_output=True)
    (tmp_path / "project").mkdir()
    tag = (
        registry_cli(
            home,
            "register",
            "--export-dir",
            str(tmp_path / "export"),
            "--gate-dir",
            str(tmp_path / "gate"),
            cwd=tmp_path / "project",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    registry_cli(home, "promote", tag, cwd=tmp_path / "project")
    reference = np.load(tmp_path / "export" / "reference_logits.npy")
    rng = np.random.default_rng(3)
    far = reference[rng.integers(0, len(reference), 60)] + rng.normal(0, 1, (60, 3)) + np.array([5.0, -5.0, 0.0])
    log(tmp_path / "log", tag, far, tmp_path / "export")
    env = {**os.environ, "BENTOML_HOME": str(home), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.drift",
            "--repo",
            str(tmp_path / "project"),
            "--window",
            "60",
            "--log-dir",
            str(tmp_path / "log"),
            "--no-retrain",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"drift in the last 60 predictions of {tag}" in result.stdout
    assert "retraining not requested" in result.stdout
