"""Stage `gate`: decide whether the candidate may be deployed, and always write why.

Reads the evaluate metrics, the export report and the train stage's run record (for the card),
scores the current champion (if any) and the candidate on the same test images, applies every
threshold from `params.yaml` in one place (transferline/evaluation/gate.py), and writes
`gate/decision.json` and `gate/model_card.md`, pass or fail.
A rejection is data, not an error, unless `gate.fail_on_reject` is set (for CI): then the stage
exits with status 2 after writing the decision.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import GateParams, load_section
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import TransferlineError
from transferline.evaluation.gate import ChampionScore, evaluate_gate
from transferline.evaluation.lineage import collect_lineage
from transferline.evaluation.metrics import classification_report
from transferline.evaluation.model_card import render_model_card
from transferline.evaluation.onnx_export import cpu_session
from transferline.evaluation.scoring import load_pixels, onnx_probabilities

log = logging.getLogger("transferline.evaluation.gate")

EXPORT_DIR = Path("export")
GATE_DIR = Path("gate")
METRICS_FILE = Path("metrics/evaluate.json")
MODEL_META = Path("models/model.json")
TRAIN_RUN = Path("metrics/train_run.json")  # where and how the model was trained
PREPARED_DIR = Path("data/prepared")
RAW_DIR = Path("data/raw")


class GateRejected(TransferlineError):
    """The candidate failed its gate and `gate.fail_on_reject` asks for a non-zero exit."""


def test_split(prepared_dir: Path, raw_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    with open(prepared_dir / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    index = {name: i for i, name in enumerate(classes)}
    return [raw_dir / row["path"] for row in rows], [index[row["label"]] for row in rows]


def score_champion(
    champion, export_dir: Path, prepared_dir: Path, raw_dir: Path, params: GateParams
) -> tuple[ChampionScore | None, str]:
    """Champion and candidate on the same test files, each with its own preprocessing."""
    if champion is None:
        return None, "no champion is deployed yet: first model"
    classes = json.loads((export_dir / "classes.json").read_text())["classes"]
    if champion.classes != classes:
        return None, (
            f"champion {champion.tag} predicts other classes ({', '.join(champion.classes)}): "
            "a regression check is not possible"
        )
    import numpy as np

    paths, labels = test_split(prepared_dir, raw_dir, classes)
    labels_array = np.asarray(labels)
    spec = PreprocessSpec.from_dict(json.loads((export_dir / "preprocess.json").read_text()))
    values = {}
    for who, onnx_path, model_spec in (
        ("candidate", export_dir / "model.onnx", spec),
        ("champion", champion.onnx_path, champion.preprocess),
    ):
        probs = onnx_probabilities(cpu_session(onnx_path), load_pixels(paths, model_spec), model_spec)
        values[who] = classification_report(probs, labels_array, classes)[params.champion_metric]
    return ChampionScore(champion.tag, values["champion"], values["candidate"], len(paths)), ""


def default_champion_lookup():
    from serving.registry import find_champion

    return find_champion()


def run(
    params: GateParams,
    champion_lookup: Callable[[], object] = default_champion_lookup,
    export_dir: Path = EXPORT_DIR,
    gate_dir: Path = GATE_DIR,
    metrics_file: Path = METRICS_FILE,
    model_meta_file: Path = MODEL_META,
    prepared_dir: Path = PREPARED_DIR,
    raw_dir: Path = RAW_DIR,
    repo: Path = Path("."),
    train_run_file: Path = TRAIN_RUN,
) -> dict:
    metrics = json.loads(metrics_file.read_text())
    export_report = json.loads((export_dir / "export_report.json").read_text())
    model_meta = json.loads(model_meta_file.read_text())
    run_record = json.loads(train_run_file.read_text()) if train_run_file.is_file() else None
    champion = champion_lookup()
    score, note = score_champion(champion, export_dir, prepared_dir, raw_dir, params)
    decision = evaluate_gate(metrics, export_report, params, score, note)
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
