"""Stage `gate`: decide whether the candidate may be deployed, and always write why.

Reads the evaluate metrics, the export report and the train stage's run record (for the card),
scores the current champion (if any; the one `champion.json` names, a declared input) and the
candidate on the same test images, compares them with McNemar's exact test, applies every
threshold from `params.yaml` in one place (transferline/evaluation/gate.py), and writes
`gate/decision.json` and `gate/model_card.md`, pass or fail.
A rejection is data, not an error, unless `gate.fail_on_reject` is set (for CI): then the stage
exits with status 2 after writing the decision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import GateParams, load_section
from transferline.data.manifest import split_rows
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import TransferlineError
from transferline.evaluation.gate import ChampionScore, ClassChange, evaluate_gate
from transferline.evaluation.lineage import collect_lineage
from transferline.evaluation.model_card import render_model_card
from transferline.evaluation.onnx_classifier import OnnxClassifier
from transferline.evaluation.paired_test import compare_paired
from transferline.evaluation.scoring import load_pixels

log = logging.getLogger("transferline.evaluation.gate")

EXPORT_DIR = Path("export")
GATE_DIR = Path("gate")
METRICS_FILE = Path("metrics/evaluate.json")
EXPORT_METRICS_FILE = Path("metrics/export.json")
SCORING_BATCH = 64  # test images per ONNX Runtime run when scoring the champion and the candidate
MODEL_META = Path("models/model.json")
TRAIN_RUN = Path("metrics/train_run.json")  # where and how the model was trained
PREPARED_DIR = Path("data/prepared")
RAW_DIR = Path("data/raw")


class GateRejected(TransferlineError):
    """The candidate failed its gate and `gate.fail_on_reject` asks for a non-zero exit."""


def test_split(prepared_dir: Path, raw_dir: Path) -> tuple[list[Path], list[str]]:
    """The test images' files and true labels, from the manifest."""
    rows = split_rows(prepared_dir, "test")
    return [raw_dir / row.path for row in rows], [row.label for row in rows]


def predicted_labels(onnx_path: Path, spec: PreprocessSpec, classes: list[str], paths: list[Path]) -> np.ndarray:
    """Class names one exported model predicts for image files, with its own preprocessing."""
    probs = OnnxClassifier.open(onnx_path, classes, spec).probabilities(load_pixels(paths, spec), SCORING_BATCH)
    return np.asarray(classes, dtype=object)[probs.argmax(axis=1)]


def score_champion(
    champion, export_dir: Path, prepared_dir: Path, raw_dir: Path
) -> tuple[ClassChange | None, ChampionScore | None, str]:
    """Champion and candidate on the same test files, each with its own preprocessing and class order.

    Returns how the class sets differ, the paired comparison (None when there is no champion or the classes
    differ: per-image right/wrong is then not comparable), and a note saying why it is None.
    """
    if champion is None:
        return None, None, "no champion is deployed yet: first model"
    classes = json.loads((export_dir / "classes.json").read_text())["classes"]
    change = ClassChange.between(champion.tag, champion.classes, classes)
    if change.changed:
        return change, None, f"champion {champion.tag} predicts other classes (see class_set): no paired comparison"
    paths, labels = test_split(prepared_dir, raw_dir)
    truth = np.asarray(labels, dtype=object)
    spec = PreprocessSpec.from_dict(json.loads((export_dir / "preprocess.json").read_text()))
    candidate = predicted_labels(export_dir / "model.onnx", spec, classes, paths)
    incumbent = predicted_labels(champion.onnx_path, champion.preprocess, champion.classes, paths)
    comparison = compare_paired(candidate == truth, incumbent == truth)
    return change, ChampionScore.from_comparison(champion.tag, comparison), ""


def default_champion_lookup(project: Path = Path(".")):
    """The champion named by the project's champion.json (a dvc dep of this stage), checked against the registry:
    judging against a champion other than the declared one would make the decision depend on an undeclared input."""
    from serving.registry import find_champion, read_champion_file

    declared = read_champion_file(project)["champion"]
    champion = find_champion()
    current = champion.tag if champion else None
    if declared != current:
        raise TransferlineError(
            f"champion.json names {declared or 'no champion'} but the registry's champion is {current or 'none'}: "
            "run `python -m serving.registry sync` (the pipeline flow does it before the stages), then re-run"
        )
    return champion


def run(
    params: GateParams,
    champion_lookup: Callable[[], object] | None = None,
    export_dir: Path = EXPORT_DIR,
    gate_dir: Path = GATE_DIR,
    metrics_file: Path = METRICS_FILE,
    model_meta_file: Path = MODEL_META,
    prepared_dir: Path = PREPARED_DIR,
    raw_dir: Path = RAW_DIR,
    repo: Path = Path("."),
    export_metrics_file: Path = EXPORT_METRICS_FILE,
    train_run_file: Path = TRAIN_RUN,
) -> dict:
    metrics = json.loads(metrics_file.read_text())
    # the export's report and its measured latency (kept apart so that export/ hashes the same on every run)
    export_report = {
        **json.loads((export_dir / "export_report.json").read_text()),
        **json.loads(export_metrics_file.read_text()),
    }
    model_meta = json.loads(model_meta_file.read_text())
    run_record = json.loads(train_run_file.read_text()) if train_run_file.is_file() else None
    champion = champion_lookup() if champion_lookup is not None else default_champion_lookup(repo)
    change, score, note = score_champion(champion, export_dir, prepared_dir, raw_dir)
    decision = evaluate_gate(metrics, export_report, params, score, note, change)
    lineage = collect_lineage(repo)
    decision.update(
        {
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "champion_at_decision": champion.tag if champion else None,
            "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "min_class_recall", "n")},
            "lineage": lineage,
        }
    )
    with atomic.atomic_dir(gate_dir) as tmp:
        atomic.write_json(tmp / "decision.json", decision)
        atomic.write_text(
            tmp / "model_card.md", render_model_card(model_meta, metrics, export_report, decision, lineage, run_record)
        )
    log.info("gate %s: %s", "PASSED" if decision["passed"] else "REJECTED", decision["reason"])
    if not decision["passed"] and params.fail_on_reject:
        raise GateRejected(f"gate rejected the candidate (gate.fail_on_reject is set): {decision['reason']}")
    return decision


def main(args) -> None:
    run(load_section("gate", GateParams, args.params))


if __name__ == "__main__":
    run_cli(main, stage_parser(__doc__.splitlines()[0]))
