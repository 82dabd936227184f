"""Monitoring benchmarks on the pipeline's own model and data (run `dvc repro export` first):

- drift: detection power of the drift report (transferline/monitoring/drift.py) at a window of 200
  predictions, for shifts injected into real test images (blur, brightness, rotation, a class-prior
  change, an unseen class), and its false-alarm rate over clean windows; the reference is the model's
  validation logits from its export, exactly what the drift flow compares with.
- ood: the out-of-distribution flag's AUROC for near and far shifts, from the export's monitoring.json.
- log: what recording one prediction costs the request path (the queue put), p50/p95 in microseconds.

Writes bench/results/monitoring.{json,md}. Usage: python -m bench.monitoring_bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import write_results

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPORT = PROJECT_ROOT / "export"
PREPARED = PROJECT_ROOT / "data" / "prepared"
WINDOW = 200
POWER_TARGET = 0.9
FALSE_ALARM_TARGET = 0.05
LOG_P95_TARGET_MS = 1.0


def load_model_and_data():
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.evaluation.onnx_classifier import OnnxClassifier
    from transferline.monitoring.ood import load_detector

    if not (EXPORT / "monitoring.json").is_file():
        raise SystemExit("no export/monitoring.json: run `dvc repro export` (or make demo) first")
    dataset = read_dataset(PREPARED)
    spec = PreprocessSpec.from_dict(json.loads((EXPORT / "preprocess.json").read_text()))
    classes = json.loads((EXPORT / "classes.json").read_text())["classes"]
    test = load_split(PREPARED, "test", len(dataset["classes"]), spec.image_size)
    classifier = OnnxClassifier.open(EXPORT / "model.onnx", classes, spec, threads=0)
    distances_file = EXPORT / "reference_distances.npy"
    reference = Answers(
        np.load(EXPORT / "reference_logits.npy"), np.load(distances_file) if distances_file.is_file() else None
    )
    return classifier, load_detector(EXPORT), reference, test, spec


@dataclass(frozen=True)
class Answers:
    """The model's answers to a set of images: logits, and feature distances when the model computes them."""

    logits: np.ndarray
    distances: np.ndarray | None

    def __len__(self) -> int:
        return len(self.logits)

    def take(self, rows: np.ndarray) -> Answers:
        return Answers(self.logits[rows], None if self.distances is None else self.distances[rows])

    @staticmethod
    def of(classifier, pixels: np.ndarray) -> Answers:
        parts = [classifier.answers(pixels[i : i + 64]) for i in range(0, len(pixels), 64)]
        distances = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        return Answers(np.concatenate([p[0] for p in parts]), distances)

    @staticmethod
    def joined(*answers: Answers) -> Answers:
        distances = None if answers[0].distances is None else np.concatenate([a.distances for a in answers])
        return Answers(np.concatenate([a.logits for a in answers]), distances)


def foreign_images(spec, limit: int = 200) -> np.ndarray:
    """Noise images and up to `limit` images of data/external/ood (photos, ELPV cells)."""
    from transferline.evaluation.scoring import load_pixels
    from transferline.monitoring import shifts

    noise = shifts.noise_images(limit, spec.image_size, seed=5)
    ood_dir = PROJECT_ROOT / "data" / "external" / "ood"
    if not ood_dir.is_dir():
        return noise
    return np.concatenate([noise, load_pixels(sorted(ood_dir.iterdir())[:limit], spec)])


def bench_drift(quick: bool) -> dict:
    from transferline.monitoring import shifts
    from transferline.monitoring.drift import drift_report

    classifier, detector, reference, test, spec = load_model_and_data()
    images, labels = np.asarray(test.images), np.asarray(test.labels)
    reference_flags = detector.flags(reference.logits, reference.distances)[1]
    rng = np.random.default_rng(0)
    windows = 20 if quick else 50
    clean_windows = 20 if quick else 100
    clean = Answers.of(classifier, images)
    num_classes = reference.logits.shape[1]
    half = np.isin(labels, np.arange(num_classes // 2))  # the first half of the classes
    pools = {
        "blur": Answers.of(classifier, shifts.blur(images, 2.0)),
        "brightness": Answers.of(classifier, shifts.brightness(images, 1.6)),
        "rotation": Answers.of(classifier, shifts.rotate(images, 30)),
    }

    def window_from(pool: Answers, weights: np.ndarray | None = None) -> Answers:
        return pool.take(rng.choice(len(pool), WINDOW, replace=True, p=weights))

    def alarm(recent: Answers, seed: int) -> bool:
        flags = detector.flags(recent.logits, recent.distances)[1]
        ref = reference.logits
        report = drift_report(
            ref, ref.argmax(1), reference_flags, recent.logits, recent.logits.argmax(1), flags, num_classes, seed=seed
        )
        return report.drift

    # a class-prior change: the first half of the classes three times as frequent as the rest
    prior = np.where(half, 3.0, 1.0)
    prior /= prior.sum()
    # an unseen class: a quarter of the window from images of none of the classes (export.ood_dir, noise)
    foreign = Answers.of(classifier, foreign_images(spec))

    def unseen_window() -> Answers:
        mixed = window_from(clean)
        intruders = foreign.take(rng.choice(len(foreign), WINDOW // 4, replace=True))
        return Answers.joined(intruders, mixed.take(np.arange(WINDOW // 4, WINDOW)))

    power = {}
    for name, pool in pools.items():
        power[name] = statistics.fmean(alarm(window_from(pool), i) for i in range(windows))
    power["class_prior"] = statistics.fmean(alarm(window_from(clean, prior), i) for i in range(windows))
    power["unseen_class"] = statistics.fmean(alarm(unseen_window(), i) for i in range(windows))
    false_alarms = statistics.fmean(alarm(window_from(clean), 1000 + i) for i in range(clean_windows))
    return {
        "window": WINDOW,
        "windows_per_shift": windows,
        "clean_windows": clean_windows,
        "reference_images": len(reference),
        "power": power,
        "false_alarm_rate": false_alarms,
        "targets": {"power": POWER_TARGET, "false_alarm_rate": FALSE_ALARM_TARGET},
        "met": {"power": min(power.values()) >= POWER_TARGET, "false_alarms": false_alarms <= FALSE_ALARM_TARGET},
    }


def bench_ood() -> dict:
    """The export's own checks for the configured detector, and every OOD method on the same images in one
    run: each calibrated on the validation answers the export kept, scored on the same near and far sets."""
    from transferline.monitoring import shifts
    from transferline.monitoring.ood import METHODS
    from transferline.monitoring.reference import build_detector, detector_aurocs

    monitoring = json.loads((EXPORT / "monitoring.json").read_text())
    checks = monitoring["checks"]
    classifier, detector, reference, test, spec = load_model_and_data()
    sample = np.asarray(test.images)
    inside = Answers.of(classifier, sample)
    near_pixels = {name: shift(sample) for name, shift in shifts.NEAR_SHIFTS.items()}
    far_pixels = {
        "noise": shifts.noise_images(100, spec.image_size),
        "photos": photos(spec),
        "elpv cells": elpv_cells(spec),
    }
    near = {name: Answers.of(classifier, pixels) for name, pixels in near_pixels.items()}
    far = {name: Answers.of(classifier, pixels) for name, pixels in far_pixels.items()}
    methods = {}
    for method in METHODS:
        if method == "mahalanobis" and reference.distances is None:
            continue
        calibrated = build_detector(reference.logits, detector.rejection_rate, method, reference.distances)
        pairs = {name: (a.logits, a.distances) for name, a in near.items()}
        far_pairs = {name: (a.logits, a.distances) for name, a in far.items()}
        judged = detector_aurocs(calibrated, (inside.logits, inside.distances), pairs, far_pairs)
        methods[method] = {
            "near": {name: v["auroc"] for name, v in judged["near"]["sets"].items()},
            "near_pooled": judged["near"]["auroc"],
            "far": {name: v["auroc"] for name, v in judged["far"]["sets"].items()},
            "far_flagged": {name: v["flagged"] for name, v in judged["far"]["sets"].items()},
            "far_pooled": judged["far"]["auroc"],
            "in_distribution_flagged": judged["in_distribution_flagged"],
        }
    return {
        "detector": monitoring["detector"],
        "test_images": len(sample),
        "near": {name: v["auroc"] for name, v in checks["near"]["sets"].items()},
        "near_pooled": checks["near"]["auroc"],
        "far": {name: v["auroc"] for name, v in checks["far"]["sets"].items()},
        "far_pooled": checks["far"]["auroc"],
        "in_distribution_flagged": checks["in_distribution_flagged"],
        "methods": methods,
        "depths": depth_ablation(sample, {**near_pixels, **far_pixels}, spec, detector.rejection_rate),
    }


DEPTH_SETS = ((1.0,), (0.33,), (0.67,), (0.33, 0.67, 1.0))  # export.ood_layers choices compared


def depth_ablation(test: np.ndarray, others: dict[str, np.ndarray], spec, rejection_rate: float) -> dict:
    """The Mahalanobis score read at other backbone depths (export.ood_layers), by the export stage's own
    fitting on the trained model (PyTorch, float64): AUROC of test images against each set, and the share
    of each set flagged at the threshold that flags `rejection_rate` of validation images."""
    from stages.export import layer_gaussians, tapped_features
    from transferline.config import ExportParams, load_section
    from transferline.data.pixel_cache import load_split
    from transferline.model.feature_taps import tap_blocks
    from transferline.model.trained_model import load_trained_model
    from transferline.monitoring.feature_gaussian import combined_distance
    from transferline.monitoring.ood import auroc

    model, meta = load_trained_model(PROJECT_ROOT / "models")
    depths = sorted({d for chosen in DEPTH_SETS for d in chosen})
    params = load_section("export", ExportParams, PROJECT_ROOT / "params.yaml").model_copy(
        update={"ood_layers": depths}
    )
    layers = layer_gaussians(model, params, spec, PREPARED, len(meta["classes"]))
    taps = [layer.tap for layer in layers]
    val = load_split(PREPARED, "val", len(meta["classes"]), spec.image_size).images
    features = {
        name: tapped_features(model, taps, np.asarray(pixels), spec)
        for name, pixels in {"val": val, "test": test, **others}.items()
    }
    names = [name for name, _ in model.blocks()]
    result = {}
    for chosen in DEPTH_SETS:
        picked = [taps.index(t) for t in tap_blocks(names, chosen)]
        scores = {
            name: combined_distance([layers[i] for i in picked], [f[i] for i in picked]) for name, f in features.items()
        }
        threshold = float(np.quantile(scores["val"], 1 - rejection_rate))
        result[", ".join(f"{d:g}" for d in chosen)] = {
            "blocks": [layers[i].tap or "head features" for i in picked],
            "auroc": {name: auroc(scores["test"], s) for name, s in scores.items() if name not in ("val", "test")},
            "flagged": {name: float(np.mean(s > threshold)) for name, s in scores.items() if name != "val"},
        }
    return result


def photos(spec) -> np.ndarray:
    """scikit-image's photographs and scans that `make assets` puts in data/external/ood."""
    return ood_files(spec, "photo-")


def elpv_cells(spec) -> np.ndarray:
    return ood_files(spec, "elpv-")


def ood_files(spec, prefix: str) -> np.ndarray:
    from transferline.evaluation.scoring import load_pixels

    files = sorted(p for p in (PROJECT_ROOT / "data" / "external" / "ood").iterdir() if p.name.startswith(prefix))
    return load_pixels(files, spec)


def bench_log(quick: bool) -> dict:
    """The request path's share of logging: building the entry and the queue put, per image."""
    from serving.prediction_log import PredictionLog

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 10)
    samples = []
    with tempfile.TemporaryDirectory() as directory:
        log = PredictionLog(Path(directory), 50_000_000, 1)
        log.start()
        for _ in range(2_000 if quick else 20_000):
            start = time.perf_counter()
            log.record(
                {
                    "time": time.time(),
                    "model_tag": "m:1",
                    "labels": ["a", "b", "c"],
                    "probabilities": [0.9, 0.05, 0.05],
                    "ood_score": -3.2,
                    "out_of_distribution": False,
                    "embedding": [round(float(x), 4) for x in logits],
                    "request_bytes": 1234,
                }
            )
            samples.append((time.perf_counter() - start) * 1e3)
        log.close()
    samples.sort()
    p95 = samples[int(0.95 * len(samples))]
    return {
        "entries": len(samples),
        "p50_ms": samples[len(samples) // 2],
        "p95_ms": p95,
        "target_p95_ms": LOG_P95_TARGET_MS,
        "met": p95 <= LOG_P95_TARGET_MS,
        "dropped": log.dropped,
    }


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def markdown(result: dict) -> str:
    drift, ood, log = result["drift"], result["ood"], result["log"]
    lines = [
        "# Monitoring: drift detection, the OOD flag, the prediction log",
        "",
        f"Machine: {result['machine']['cpu']}. Model: the pipeline's export/ (reference: "
        f"{drift['reference_images']} validation logits).",
        "",
        f"## Drift at a window of {drift['window']} predictions",
        "",
        f"| shift | detection power ({drift['windows_per_shift']} windows) |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in drift["power"].items()),
        "",
        f"False alarms over {drift['clean_windows']} clean windows of test images: {drift['false_alarm_rate']:.2f} "
        f"(target <= {FALSE_ALARM_TARGET}); power target >= {POWER_TARGET}: "
        f"{verdict(drift['met']['power'])}; false alarms: {verdict(drift['met']['false_alarms'])}.",
        "",
        "## Out-of-distribution flag (AUROC, test images against each set)",
        "",
        "| set | kind | AUROC |",
        "|---|---|---|",
        *(f"| {name} | near | {value:.3f} |" for name, value in ood["near"].items()),
        *(f"| {name} | far | {value:.3f} |" for name, value in ood["far"].items()),
        "",
        f"Pooled: near {ood['near_pooled']:.3f}, far {ood['far_pooled']:.3f}; in-distribution test images flagged: "
        f"{ood['in_distribution_flagged']:.3f} (calibrated on val to {ood['detector']['rejection_rate']}; method "
        f"{ood['detector']['method']}; these are the export's own checks, on its parity sample of test images).",
        "",
        *methods_table(ood),
        *depths_table(ood.get("depths")),
        "## Prediction log on the request path",
        "",
        f"Per image: p50 {log['p50_ms'] * 1000:.1f} us, p95 {log['p95_ms'] * 1000:.1f} us over "
        f"{log['entries']} entries (target p95 <= {LOG_P95_TARGET_MS} ms: {verdict(log['met'])}); "
        f"dropped {log['dropped']}.",
        "",
    ]
    return "\n".join(lines)


def methods_table(ood: dict) -> list[str]:
    """Every OOD method's AUROC per set, side by side: the same images, each calibrated the same way."""
    methods = ood["methods"]
    if not methods:
        return []
    first = next(iter(methods.values()))
    header = [
        *first["near"],
        "near pooled",
        *first["far"],
        "far pooled",
        "far sets flagged",
        "val-calibrated, test flagged",
    ]
    lines = [
        f"### Every method on the same images ({ood['test_images']} test images; each calibrated on the same "
        "validation answers)",
        "",
        "| method | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for method, m in methods.items():
        cells = [
            *(f"{v:.3f}" for v in m["near"].values()),
            f"{m['near_pooled']:.3f}",
            *(f"{v:.3f}" for v in m["far"].values()),
            f"{m['far_pooled']:.3f}",
            ", ".join(f"{k} {v:.2f}" for k, v in m["far_flagged"].items()),
            f"{m['in_distribution_flagged']:.3f}",
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def depths_table(depths: dict | None) -> list[str]:
    """The Mahalanobis score at each set of depths: AUROC per set, and the share flagged at the 5% threshold."""
    if not depths:
        return []
    sets = list(next(iter(depths.values()))["auroc"])
    lines = [
        "### The Mahalanobis score read at other depths of the backbone (export.ood_layers)",
        "",
        "Fitted by the export stage's own code on the trained model, scored in PyTorch (float64); the threshold "
        "flags the same share of validation images as the detector.",
        "",
        "| depths | blocks | " + " | ".join(sets) + " | flagged: " + ", ".join([*sets, "test"]) + " |",
        "|---|---|" + "---|" * (len(sets) + 1),
    ]
    for chosen, row in depths.items():
        flagged = ", ".join(f"{row['flagged'][name]:.2f}" for name in [*sets, "test"])
        aurocs = " | ".join(f"{row['auroc'][name]:.3f}" for name in sets)
        lines.append(f"| {chosen} | {', '.join(row['blocks'])} | {aurocs} | {flagged} |")
    return [*lines, ""]


def run(quick: bool = False) -> dict:
    from bench.common import machine

    result = {"machine": machine(), "drift": bench_drift(quick), "ood": bench_ood(), "log": bench_log(quick)}
    write_results("monitoring", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    print(markdown(run(parser.parse_args(argv).quick)))


if __name__ == "__main__":
    main()
