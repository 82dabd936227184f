"""Stage `evaluate`: score the trained model on the held-out test split.

Writes `metrics/evaluate.json` (accuracy, top-k, macro and per-class precision/recall/F1,
ROC-AUC one-vs-rest, log-loss, expected calibration error) for `dvc metrics diff`, and four
DVC plots: the confusion matrix, per-class F1, the reliability (calibration) curve, and a gallery of
the most confidently wrong test images (confident_errors.png), whose files confident_errors.json
lists so that each can be traced to data/raw.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import EvaluateParams, load_section
from transferline.data.pixel_cache import SplitData, load_split, split_paths
from transferline.data.preprocessing import PreprocessSpec
from transferline.evaluation import gallery
from transferline.evaluation.metrics import classification_report, reliability_bins
from transferline.evaluation.onnx_classifier import softmax
from transferline.evaluation.scoring import torch_logits

log = logging.getLogger("transferline.evaluate")

MODELS_DIR = Path("models")
PREPARED_DIR = Path("data/prepared")
METRICS_FILE = Path("metrics/evaluate.json")
PLOTS_DIR = Path("plots/evaluate")


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_gallery(
    probs: np.ndarray, test: SplitData, classes: list[str], paths: list[str], size: int, plots_dir: Path
) -> list[gallery.ConfidentError]:
    """confident_errors.png (a DVC image plot) and confident_errors.json (the same images, traceable)."""
    errors = gallery.confident_errors(probs, test.labels, classes, paths, size)
    total_errors = int((probs.argmax(axis=1) != test.labels).sum())
    atomic.write_bytes(plots_dir / "confident_errors.png", gallery.render(test.images, errors, total_errors, len(test)))
    listing = {
        "test_images": len(test),
        "errors": total_errors,
        "shown": len(errors),
        "paths_relative_to": "data/raw",
        "images": [error.to_dict() for error in errors],
    }
    atomic.write_json(plots_dir / "confident_errors.json", listing)
    return errors


def run(
    params: EvaluateParams,
    model,
    classes: list[str],
    spec: PreprocessSpec,
    prepared_dir: Path = PREPARED_DIR,
    metrics_file: Path = METRICS_FILE,
    plots_dir: Path = PLOTS_DIR,
) -> dict:
    test = load_split(prepared_dir, "test", len(classes), spec.image_size)
    images, labels = test.images, test.labels
    paths = split_paths(prepared_dir, "test", len(test))  # checked before anything is written
    probs = softmax(torch_logits(model, images, spec, params.batch_size).astype(np.float64))
    report = classification_report(probs, labels, classes, params.top_k, params.calibration_bins)
    report["data_version"] = json.loads((prepared_dir / "dataset.json").read_text())["data_version"]
    predicted = probs.argmax(axis=1)
    atomic.write_json(metrics_file, report)
    atomic.write_text(
        plots_dir / "confusion.csv",
        csv_text([{"actual": classes[a], "predicted": classes[p]} for a, p in zip(labels, predicted, strict=True)]),
    )
    atomic.write_text(
        plots_dir / "per_class.csv",
        csv_text(
            [{"class": name, **{k: round(v, 6) for k, v in m.items()}} for name, m in report["per_class"].items()]
        ),
    )
    atomic.write_text(plots_dir / "calibration.csv", csv_text(reliability_bins(probs, labels, params.calibration_bins)))
    write_gallery(probs, test, classes, paths, params.gallery_size, plots_dir)
    log.info(
        "test accuracy %.4f, macro-F1 %.4f, top-%d %.4f, ECE %.4f on %d images",
        report["accuracy"],
        report["macro_f1"],
        report["top_k"],
        report["top_k_accuracy"],
        report["ece"],
        report["n"],
    )
    return report


def main(args) -> None:
    from transferline.model.trained_model import load_trained_model

    model, meta = load_trained_model(MODELS_DIR)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    run(load_section("evaluate", EvaluateParams, args.params), model, meta["classes"], spec)


if __name__ == "__main__":
    run_cli(main, stage_parser(__doc__.splitlines()[0]))
