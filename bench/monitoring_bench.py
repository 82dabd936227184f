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
    return classifier, load_detector(EXPORT), np.load(EXPORT / "reference_logits.npy"), test, spec


def bench_drift(quick: bool) -> dict:
    from transferline.monitoring import shifts
    from transferline.monitoring.drift import drift_report

    classifier, detector, reference, test, spec = load_model_and_data()
    images, labels = np.asarray(test.images), np.asarray(test.labels)
    reference_flags = detector.flags(reference)[1]
    rng = np.random.default_rng(0)
    windows = 20 if quick else 50
    clean_windows = 20 if quick else 100

    def logits_of(pixels: np.ndarray) -> np.ndarray:
        return classifier.logits(pixels, batch_size=64)

    clean_logits = logits_of(images)
    num_classes = reference.shape[1]
    half = np.isin(labels, np.arange(num_classes // 2))  # the first half of the classes
    pools = {
        "blur": logits_of(shifts.blur(images, 2.0)),
        "brightness": logits_of(shifts.brightness(images, 1.6)),
        "rotation": logits_of(shifts.rotate(images, 30)),
    }

    def window_from(pool: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return pool[rng.choice(len(pool), WINDOW, replace=True, p=weights)]

    def alarm(recent: np.ndarray, seed: int) -> bool:
        flags = detector.flags(recent)[1]
        report = drift_report(
            reference, reference.argmax(1), reference_flags, recent, recent.argmax(1), flags, num_classes, seed=seed
        )
        return report.drift

    # a class-prior change: the first half of the classes three times as frequent as the rest
    prior = np.where(half, 3.0, 1.0)
    prior /= prior.sum()
    # an unseen class: a quarter of the window from images of none of the classes (export.ood_dir, noise)
    foreign = logits_of(shifts.noise_images(200, spec.image_size, seed=5))
    ood_dir = PROJECT_ROOT / "data" / "external" / "ood"
    if ood_dir.is_dir():
        from transferline.evaluation.scoring import load_pixels

        files = sorted(ood_dir.iterdir())[:200]
        foreign = np.concatenate([foreign, logits_of(load_pixels(files, spec))])

    def unseen_window() -> np.ndarray:
        mixed = window_from(clean_logits)
        mixed[: WINDOW // 4] = foreign[rng.choice(len(foreign), WINDOW // 4, replace=True)]
        return mixed

    power = {}
    for name, pool in pools.items():
        power[name] = statistics.fmean(alarm(window_from(pool), i) for i in range(windows))
    power["class_prior"] = statistics.fmean(alarm(window_from(clean_logits, prior), i) for i in range(windows))
    power["unseen_class"] = statistics.fmean(alarm(unseen_window(), i) for i in range(windows))
    false_alarms = statistics.fmean(alarm(window_from(clean_logits), 1000 + i) for i in range(clean_windows))
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
    monitoring = json.loads((EXPORT / "monitoring.json").read_text())
    checks = monitoring["checks"]
    return {
        "detector": monitoring["detector"],
        "near": {name: v["auroc"] for name, v in checks["near"]["sets"].items()},
        "near_pooled": checks["near"]["auroc"],
        "far": {name: v["auroc"] for name, v in checks["far"]["sets"].items()},
        "far_pooled": checks["far"]["auroc"],
        "in_distribution_flagged": checks["in_distribution_flagged"],
    }


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
        f"{ood['in_distribution_flagged']:.3f} (calibrated on val to {ood['detector']['rejection_rate']}).",
        "",
        "## Prediction log on the request path",
        "",
        f"Per image: p50 {log['p50_ms'] * 1000:.1f} us, p95 {log['p95_ms'] * 1000:.1f} us over "
        f"{log['entries']} entries (target p95 <= {LOG_P95_TARGET_MS} ms: {verdict(log['met'])}); "
        f"dropped {log['dropped']}.",
        "",
    ]
    return "\n".join(lines)


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
