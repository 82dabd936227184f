"""Inference speed and accuracy: PyTorch eager (its best CPU configuration) vs ONNX Runtime FP32 and INT8.

The baseline is PyTorch as a careful user runs it on this CPU: `torch.inference_mode`, channels-last
weights and inputs (oneDNN's fast path for MobileNetV2's depthwise convolutions), the same thread count
as ONNX Runtime. Plain contiguous eager is measured too, for reference; the headline ratio is against
the faster of the two at each batch size. Every engine and batch size (1 and 32) is timed once per
round, REPEATS rounds, the order reversed every other round, so load from other processes falls on
all alike; each cell is the median over the rounds with its range. INT8 against FP32 is also timed at
the service's per-worker thread count (serve.ort_threads, 1 by default: the service runs one model per
worker): the INT8 speed target applies there, where INT8 would be served. With 2 threads on a batch
of one 96 px image, each operator is too small to split, and thread hand-offs eat most of what INT8
saves (INT8 1.55x FP32 with 1 thread, 1.37x with 2, one run on the Intel Xeon). The INT8 variant
answers logits only (transferline/evaluation/onnx_export.py, classifier_only), so it is compared with
the FP32 graph's logits alone; against the served graph, which also computes the feature distance
(about 0.12 ms a batch-1 image on one thread), it is reported for reference.

Model: the pipeline's trained model (models/ + export/, as `dvc repro` leaves them), with test accuracy
on the full test split; without one, a random-init MobileNetV2 of the default size (speed only), and
the report says which. Writes bench/results/export.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import interleaved, write_results
from bench.model_source import PIPELINE_EXPORT, PIPELINE_MODELS, SYNTHETIC_CLASSES, trained_model_present
from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.evaluation.onnx_export import classifier_only, cpu_session, run_batches

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 32)
REPEATS = 5
QUICK_REPEATS = 3
ORT_VS_EAGER_TARGET = 1.5
INT8_SPEED_TARGET = 1.5  # at batch 1, with the service's per-worker thread count
SERVICE_SUFFIX = "_service_threads"
LOGITS_ONLY = "ort_fp32_logits_only"  # INT8 is compared with the FP32 graph that answers what it answers
INT8_LOSS_TARGET_POINTS = 1.0


def images_per_second(predict: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Throughput of `predict` on one ready batch over `seconds` (after 3 untimed calls)."""
    for _ in range(3):
        predict(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def torch_engines(model) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Eager PyTorch as shipped (contiguous) and in its best CPU configuration (channels-last), both in
    inference mode; separate model copies, so one's memory format never leaks into the other."""
    import copy

    import torch

    contiguous = copy.deepcopy(model).eval()
    channels_last = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return contiguous(torch.from_numpy(x)).numpy()

    def eager_channels_last(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return channels_last(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    return {"pytorch_eager": eager, "pytorch_eager_channels_last": eager_channels_last}


def ort_engines(
    export_dir: Path, logits_only: Path, threads: int, suffix: str = ""
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The served FP32 graph (logits and the feature distance), its logits alone (`logits_only`, what the
    INT8 variant is quantized from: classifier_only) and the INT8 variant, where each file exists."""
    engines = {}
    files = (
        ("ort_fp32", export_dir / "model.onnx"),
        (LOGITS_ONLY, logits_only),
        ("ort_int8", export_dir / "model.int8.onnx"),
    )
    for name, path in files:
        if path.is_file():
            session = cpu_session(path, threads)
            engines[name + suffix] = lambda x, session=session: run_batches(session, x, len(x))
    return engines


def service_threads() -> int:
    """ONNX Runtime threads per service worker, as the serve settings give them (0: one per core)."""
    from serving.settings import load_serve_params

    return load_serve_params().ort_threads or os.cpu_count() or 1


def load_model(tmp: Path) -> tuple[object, PreprocessSpec, Path, dict]:
    """(torch model, preprocessing, export dir, description): the trained model if present, else synthetic."""
    if trained_model_present():
        from transferline.model.trained_model import load_trained_model

        model, meta = load_trained_model(PIPELINE_MODELS)
        spec = PreprocessSpec.from_dict(meta["preprocess"])
        about = {"kind": "trained", "description": f"trained by the pipeline: {meta['backbone']} ({meta['strategy']})"}
        return model, spec, PIPELINE_EXPORT, about
    from bench.synthetic_bundle import mobilenet_v2, write_export_dir

    model = mobilenet_v2(SYNTHETIC_CLASSES)
    spec = write_export_dir(model, [f"class_{i}" for i in range(SYNTHETIC_CLASSES)], 96, tmp / "export")
    about = {"kind": "synthetic", "description": "synthetic: random-init MobileNetV2 (no trained model present)"}
    return model, spec, tmp / "export", about


def test_split(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray] | None:
    cache = PROJECT_ROOT / "data" / "prepared" / "cache"
    if not (cache / "test_images.npy").is_file():
        return None
    return normalize(np.load(cache / "test_images.npy"), spec), np.load(cache / "test_labels.npy")


def accuracy(predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, labels: np.ndarray) -> float:
    logits = np.concatenate([np.asarray(predict(pixels[i : i + 64])) for i in range(0, len(pixels), 64)])
    return float((logits.argmax(1) == labels).mean())


def ratio_cell(numerator: dict, denominator: dict) -> dict:
    """Median ratio, and the ratio's range from the rounds' extremes (worst and best case)."""
    return {
        "median": numerator["median"] / denominator["median"],
        "min": numerator["min"] / denominator["max"],
        "max": numerator["max"] / denominator["min"],
    }


def run(quick: bool = False) -> dict:
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    seconds, repeats = (0.5, QUICK_REPEATS) if quick else (2.0, REPEATS)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp_name:
        model, spec, export_dir, about = load_model(Path(tmp_name))
        worker_threads = service_threads()
        logits_only = Path(tmp_name) / "model.logits_only.onnx"
        classifier_only(export_dir / "model.onnx", logits_only)
        engines = {**torch_engines(model), **ort_engines(export_dir, logits_only, threads)}
        if worker_threads != threads:
            engines |= ort_engines(export_dir, logits_only, worker_threads, SERVICE_SUFFIX)
        inputs = np.random.default_rng(0).standard_normal((max(BATCH_SIZES), 3, spec.image_size, spec.image_size))
        inputs = inputs.astype(np.float32)
        cells = {
            f"{name}@{batch}": (lambda p=predict, b=batch: images_per_second(p, inputs[:b], seconds))
            for name, predict in engines.items()
            for batch in BATCH_SIZES
        }
        measured = interleaved(cells, repeats)
        split = test_split(spec) if about["kind"] == "trained" else None
        accuracies = {name: accuracy(predict, *split) for name, predict in engines.items()} if split else {}
        report = json.loads((export_dir / "export_report.json").read_text())
        int8_note = report.get("int8", {}).get("summary")
    results = analyse(measured, engines, accuracies, about, spec, threads, seconds, repeats, split)
    results["service_threads"] = worker_threads
    results["int8_export_summary"] = int8_note
    write_results("export", results, markdown(results))
    return results


def analyse(measured, engines, accuracies, about, spec, threads, seconds, repeats, split) -> dict:
    speed = {
        name: {f"batch_{b}": measured[f"{name}@{b}"] for b in BATCH_SIZES} | {"accuracy": accuracies.get(name)}
        for name in engines
    }
    best_eager = {
        f"batch_{b}": max(
            ("pytorch_eager", "pytorch_eager_channels_last"), key=lambda n, b=b: speed[n][f"batch_{b}"]["median"]
        )
        for b in BATCH_SIZES
    }
    ratios = {
        f"ort_fp32_vs_best_eager_batch_{b}": ratio_cell(
            speed["ort_fp32"][f"batch_{b}"], speed[best_eager[f"batch_{b}"]][f"batch_{b}"]
        )
        for b in BATCH_SIZES
    }
    ratios |= {
        f"ort_fp32_vs_contiguous_eager_batch_{b}": ratio_cell(
            speed["ort_fp32"][f"batch_{b}"], speed["pytorch_eager"][f"batch_{b}"]
        )
        for b in BATCH_SIZES
    }
    if "ort_int8" in speed:
        ratios |= {
            f"ort_int8_vs_fp32_batch_{b}": ratio_cell(speed["ort_int8"][f"batch_{b}"], speed[LOGITS_ONLY][f"batch_{b}"])
            for b in BATCH_SIZES
        }
        served = SERVICE_SUFFIX if "ort_int8" + SERVICE_SUFFIX in speed else ""
        ratios |= {
            f"ort_int8_vs_fp32_batch_{b}_service_threads": ratio_cell(
                speed["ort_int8" + served][f"batch_{b}"], speed[LOGITS_ONLY + served][f"batch_{b}"]
            )
            for b in BATCH_SIZES
        }
        # for reference: against the served graph, which also computes the feature distance
        ratios["ort_int8_vs_served_fp32_batch_1_service_threads"] = ratio_cell(
            speed["ort_int8" + served]["batch_1"], speed["ort_fp32" + served]["batch_1"]
        )
        if accuracies:
            ratios["int8_accuracy_loss_points"] = 100 * (accuracies["ort_fp32"] - accuracies["ort_int8"])
    return {
        "model": about,
        "threads": threads,
        "image_size": spec.image_size,
        "test_images": len(split[1]) if split else 0,
        "seconds_per_cell": seconds,
        "repeats": repeats,
        "engines": speed,
        "best_eager": best_eager,
        "ratios": ratios,
        "targets": {
            "ort_fp32_vs_best_eager_batch_1": ORT_VS_EAGER_TARGET,
            "ort_int8_vs_fp32_batch_1_service_threads": INT8_SPEED_TARGET,
            "int8_accuracy_loss_points": INT8_LOSS_TARGET_POINTS,
        },
    }


def markdown(r: dict) -> str:
    def cell(found: dict, digits: int = 0) -> str:
        return f"{found['median']:.{digits}f} ({found['min']:.{digits}f}-{found['max']:.{digits}f})"

    def verdict(value: float, target: float, higher: bool = True) -> str:
        return "met" if (value >= target if higher else value <= target) else "NOT met"

    rows = [
        f"| {name} | {'' if e['accuracy'] is None else format(e['accuracy'], '.4f')} | "
        + " | ".join(cell(e[f"batch_{b}"]) for b in BATCH_SIZES)
        + " |"
        for name, e in r["engines"].items()
    ]
    ratios, targets = r["ratios"], r["targets"]
    lines = [
        "# Inference: PyTorch eager vs ONNX Runtime (CPU)",
        "",
        f"Model: {r['model']['description']}; {r['image_size']} px, {r['threads']} threads for every engine"
        + (f", accuracy on {r['test_images']} test images" if r["test_images"] else ", no accuracy (no trained model)")
        + f". Images/s over {r['seconds_per_cell']:g} s per cell, {r['repeats']} interleaved rounds: "
        "median (range). PyTorch runs under `torch.inference_mode`; channels-last converts weights and inputs.",
        "",
        "| engine | test accuracy | " + " | ".join(f"batch {b} images/s" for b in BATCH_SIZES) + " |",
        "|---|---|" + "---|" * len(BATCH_SIZES),
        *rows,
        "",
        "Best eager configuration: "
        + ", ".join(f"{batch.replace('_', ' ')}: {name}" for batch, name in r["best_eager"].items())
        + ".",
        "",
        "| ratio | median (range) | target | verdict |",
        "|---|---|---|---|",
    ]
    for b in BATCH_SIZES:
        value = ratios[f"ort_fp32_vs_best_eager_batch_{b}"]
        target = f">= {ORT_VS_EAGER_TARGET:g}x" if b == 1 else ""
        judged = verdict(value["median"], targets["ort_fp32_vs_best_eager_batch_1"]) if b == 1 else ""
        lines.append(f"| ORT FP32 / best eager, batch {b} | {cell(value, 2)}x | {target} | {judged} |")
    for b in BATCH_SIZES:
        lines.append(
            f"| ORT FP32 / contiguous eager, batch {b} | {cell(ratios[f'ort_fp32_vs_contiguous_eager_batch_{b}'], 2)}x"
            " | | |"
        )
    if "ort_int8_vs_fp32_batch_1" in ratios:
        served = r["service_threads"]
        for b in BATCH_SIZES:
            speed = ratios[f"ort_int8_vs_fp32_batch_{b}_service_threads"]
            judged = f">= {INT8_SPEED_TARGET:g}x | {verdict(speed['median'], INT8_SPEED_TARGET)}" if b == 1 else " | "
            lines.append(
                f"| ORT INT8 / FP32, batch {b}, {served} thread{'s' if served > 1 else ''} (the service's per "
                f"worker) | {cell(speed, 2)}x | {judged} |"
            )
        for b in BATCH_SIZES:
            speed = ratios[f"ort_int8_vs_fp32_batch_{b}"]
            lines.append(f"| ORT INT8 / FP32, batch {b}, {r['threads']} threads | {cell(speed, 2)}x | | |")
        if "ort_int8_vs_served_fp32_batch_1_service_threads" in ratios:
            speed = ratios["ort_int8_vs_served_fp32_batch_1_service_threads"]
            lines.append(
                f"| ORT INT8 / served FP32 graph (logits and feature distance), batch 1, {served} "
                f"thread{'s' if served > 1 else ''} | {cell(speed, 2)}x | | |"
            )
    if "int8_accuracy_loss_points" in ratios:
        loss = ratios["int8_accuracy_loss_points"]
        lines.append(
            f"| INT8 test accuracy loss | {loss:.2f} points | <= {INT8_LOSS_TARGET_POINTS:g} point | "
            f"{verdict(loss, INT8_LOSS_TARGET_POINTS, higher=False)} |"
        )
    if r.get("int8_export_summary"):
        lines += ["", f"INT8 at export: {r['int8_export_summary']}"]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(markdown(run(parser.parse_args().quick)))
