"""Inference speed and accuracy: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8, on CPU.

Uses the pipeline's own outputs (models/, export/, data/prepared/), so run it after `make demo`.
All three are timed in the same process and run, at batch 1 and 32, with the same thread count;
accuracy is on the full test split. Writes bench/results/export.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import write_results
from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.evaluation.onnx_export import cpu_session, run_batches
from transferline.model.trained_model import load_trained_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def images_per_second(predict, pixels: np.ndarray, batch_size: int, seconds: float) -> float:
    batch = pixels[:batch_size]
    for _ in range(3):
        predict(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model, meta = load_trained_model(PROJECT_ROOT / "models")
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    cache = PROJECT_ROOT / "data" / "prepared" / "cache"
    images, labels = np.load(cache / "test_images.npy"), np.load(cache / "test_labels.npy")
    pixels = normalize(images, spec)
    export_dir = PROJECT_ROOT / "export"
    engines = {"pytorch_eager": lambda x: model(torch.from_numpy(x))}
    for name, file_name in (("ort_fp32", "model.onnx"), ("ort_int8", "model.int8.onnx")):
        if (export_dir / file_name).is_file():
            session = cpu_session(export_dir / file_name, threads)
            engines[name] = lambda x, session=session: run_batches(session, x, len(x))
    seconds = 1.0 if quick else 4.0
    results: dict = {"threads": threads, "image_size": spec.image_size, "test_images": len(labels), "engines": {}}
    for name, predict in engines.items():
        with torch.inference_mode():
            logits = np.concatenate([np.asarray(predict(pixels[i : i + 64])) for i in range(0, len(pixels), 64)])
            speed = {f"batch_{b}": images_per_second(predict, pixels, b, seconds) for b in (1, 32)}
        results["engines"][name] = {"accuracy": float((logits.argmax(1) == labels).mean()), **speed}
    eager = results["engines"]["pytorch_eager"]
    fp32 = results["engines"]["ort_fp32"]
    results["ratios"] = {
        "ort_fp32_vs_eager_batch_1": fp32["batch_1"] / eager["batch_1"],
        "ort_fp32_vs_eager_batch_32": fp32["batch_32"] / eager["batch_32"],
    }
    if "ort_int8" in results["engines"]:
        int8 = results["engines"]["ort_int8"]
        results["ratios"]["ort_int8_vs_fp32_batch_1"] = int8["batch_1"] / fp32["batch_1"]
        results["ratios"]["ort_int8_vs_fp32_batch_32"] = int8["batch_32"] / fp32["batch_32"]
        results["ratios"]["int8_accuracy_loss_points"] = 100 * (fp32["accuracy"] - int8["accuracy"])
    report = json.loads((export_dir / "export_report.json").read_text())
    lines = [
        "# Inference: PyTorch eager vs ONNX Runtime (CPU)",
        "",
        f"{meta['backbone']} ({meta['strategy']}), {spec.image_size} px, {threads} threads, "
        f"{len(labels)} test images; images/s over {seconds:.0f} s per cell.",
        "",
        "| engine | test accuracy | batch 1 images/s | batch 32 images/s |",
        "|---|---|---|---|",
        *(
            f"| {name} | {r['accuracy']:.4f} | {r['batch_1']:.0f} | {r['batch_32']:.0f} |"
            for name, r in results["engines"].items()
        ),
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| ORT FP32 / eager, batch 1 | {results['ratios']['ort_fp32_vs_eager_batch_1']:.2f}x | >= 1.5x |",
        f"| ORT FP32 / eager, batch 32 | {results['ratios']['ort_fp32_vs_eager_batch_32']:.2f}x | |",
    ]
    if "ort_int8" in results["engines"]:
        ratios = results["ratios"]
        lines += [
            f"| ORT INT8 / FP32, batch 1 | {ratios['ort_int8_vs_fp32_batch_1']:.2f}x | >= 1.5x |",
            f"| ORT INT8 / FP32, batch 32 | {ratios['ort_int8_vs_fp32_batch_32']:.2f}x | |",
            f"| INT8 accuracy loss | {ratios['int8_accuracy_loss_points']:.2f} points | <= 1 point |",
        ]
    else:
        lines += ["", f"No INT8 variant: {report.get('int8', {}).get('summary')}"]
    lines.append("")
    write_results("export", results, "\n".join(lines))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
