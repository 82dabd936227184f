"""Stage `export`: ONNX export with a dynamic batch axis, parity and latency report, optional INT8.

Writes `export/`: model.onnx (one self-contained file, ONNX Runtime's portable optimisations
saved), preprocess.json and classes.json (what the service needs to feed it), an INT8 variant of the
classifier (logits only) only if it stays within `export.int8_max_accuracy_drop` on the validation
split, and export_report.json (opset, parity at batch 1 and a larger batch on real test images, size)
that the gate reads. Latency is a measurement, different on every run, so it goes to `metrics/export.json`
(a DVC metric, not part of `export/`): the same model exports to the same bytes and the same DVC hash.
The gate, not this stage, decides whether the figures are good enough.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import ExportParams, load_section
from transferline.data.imaging import IMAGE_EXTENSIONS, ImageRejected
from transferline.data.pixel_cache import load_split
from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.evaluation.onnx_classifier import DISTANCE_NAME, OUTPUT_NAME
from transferline.evaluation.onnx_export import (
    check_parity,
    cpu_session,
    export_onnx,
    measure_latency,
    optimize_onnx,
    quantize_int8,
    run_answers,
    run_batches,
    scored_model,
)
from transferline.evaluation.scoring import load_pixels, torch_logits
from transferline.model.feature_taps import TappedBody, tap_blocks
from transferline.monitoring import shifts
from transferline.monitoring.feature_gaussian import LayerGaussian, fit_feature_gaussian, standardisation
from transferline.monitoring.ood import MONITORING_FILE
from transferline.monitoring.reference import Outputs, build_detector, detector_aurocs, predicted_class_shares

log = logging.getLogger("transferline.export")

MODELS_DIR = Path("models")
PREPARED_DIR = Path("data/prepared")
EXPORT_DIR = Path("export")
METRICS_FILE = Path("metrics/export.json")
REFERENCE_FILE = "reference_logits.npy"  # validation logits: the drift flow's reference sample
REFERENCE_DISTANCES_FILE = "reference_distances.npy"  # their feature distances: the reference's OOD flags
NOISE_IMAGES = 100


def int8_variant(
    fp32_path: Path, target: Path, params: ExportParams, spec: PreprocessSpec, prepared_dir: Path, num_classes: int
) -> dict:
    """Quantize on training images; keep the file only if validation accuracy drops within budget."""
    train_images = load_split(prepared_dir, "train", num_classes, spec.image_size).images
    rng = np.random.default_rng(0)
    pick = np.sort(
        rng.choice(len(train_images), size=min(params.int8_calibration_images, len(train_images)), replace=False)
    )
    config = quantize_int8(
        fp32_path, target, normalize(np.asarray(train_images[pick]), spec), keep_float_ends=params.int8_keep_float_ends
    )
    val = load_split(prepared_dir, "val", num_classes, spec.image_size)
    val_images, val_labels = val.images, val.labels
    val_pixels = normalize(np.asarray(val_images), spec)
    fp32_acc = float((run_batches(cpu_session(fp32_path), val_pixels, 64).argmax(1) == val_labels).mean())
    int8_session = cpu_session(target)
    int8_acc = float((run_batches(int8_session, val_pixels, 64).argmax(1) == val_labels).mean())
    drop = fp32_acc - int8_acc
    kept = drop <= params.int8_max_accuracy_drop
    result = {
        "kept": kept,
        "val_accuracy_fp32": fp32_acc,
        "val_accuracy_int8": int8_acc,
        "accuracy_drop": drop,
        "max_accuracy_drop": params.int8_max_accuracy_drop,
        "bytes": target.stat().st_size,
        "quantization": config,
        "outputs": [output.name for output in int8_session.get_outputs()],  # the classifier's (classifier_only)
    }
    if kept:
        result["summary"] = (
            f"kept (model.int8.onnx, logits only): validation accuracy {int8_acc:.4f} vs {fp32_acc:.4f} FP32, "
            f"{result['bytes'] / 1e6:.2f} MB"
        )
    else:
        target.unlink()
        result["summary"] = (
            f"discarded: validation accuracy dropped {drop:.4f} (budget {params.int8_max_accuracy_drop})"
        )
    return result


def foreign_pixels(directory: Path, spec: PreprocessSpec, limit: int) -> tuple[np.ndarray, list[str]]:
    """Up to `limit` decodable images of `directory`, spread evenly over its files sorted by name (so the
    choice is repeatable and a kind of image whose names sort last is not cut off), as model input pixels;
    the names of files that could not be used."""
    if not directory.is_dir():
        return np.empty((0, spec.image_size, spec.image_size, 3), np.uint8), []
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    usable, skipped = [], []
    for path in files:
        try:
            usable.append(load_pixels([path], spec)[0])
        except ImageRejected:
            skipped.append(path.name)
    if not usable:
        return np.empty((0, spec.image_size, spec.image_size, 3), np.uint8), skipped
    return np.stack(usable), skipped


def monitoring_reference(
    session, params: ExportParams, spec: PreprocessSpec, prepared_dir: Path, classes: list[str], sample: np.ndarray
) -> tuple[dict, np.ndarray]:
    """The OOD detector calibrated on val, the drift reference, and the detector's AUROC on near shifts of
    the test sample and on far (class-free) images: monitoring.json's content, and the validation logits
    and feature distances."""
    val = load_split(prepared_dir, "val", len(classes), spec.image_size)

    def outputs(pixels: np.ndarray) -> Outputs:
        return run_answers(session, normalize(np.asarray(pixels), spec), 64)

    val_logits, val_distances = outputs(val.images)
    detector = build_detector(val_logits, params.ood_rejection_rate, params.ood_method, val_distances)
    near = {name: outputs(shift(sample)) for name, shift in shifts.NEAR_SHIFTS.items()}
    far = {"noise": outputs(shifts.noise_images(NOISE_IMAGES, spec.image_size))}
    foreign, skipped = foreign_pixels(params.ood_dir, spec, params.ood_images)
    if len(foreign):
        far[str(params.ood_dir)] = outputs(foreign)
    document = {
        "detector": detector.to_dict(),
        "drift_reference": {
            "file": REFERENCE_FILE,
            "images": len(val_logits),
            "class_shares": [round(float(x), 6) for x in predicted_class_shares(val_logits, len(classes))],
        },
        "checks": detector_aurocs(detector, outputs(sample), near, far),
        "skipped_ood_files": skipped,
    }
    return document, val_logits.astype(np.float32), val_distances.astype(np.float32)


def tapped_features(model, taps: list, images: np.ndarray, spec: PreprocessSpec) -> list[np.ndarray]:
    """Each tap's pooled features of uint8 `images`, in float64."""
    import torch

    tapped = TappedBody(model, taps).eval()
    parts: list[list[np.ndarray]] = [[] for _ in taps]
    with torch.no_grad():
        for start in range(0, len(images), 64):
            batch = torch.from_numpy(normalize(images[start : start + 64], spec))
            for part, features in zip(parts, tapped(batch), strict=True):
                part.append(features.numpy())
    return [np.concatenate(part).astype(np.float64) for part in parts]


def layer_gaussians(
    model, params: ExportParams, spec: PreprocessSpec, prepared_dir: Path, num_classes: int
) -> list[LayerGaussian]:
    """Per tap (export.ood_layers), the class-conditional Gaussian of its pooled features on (up to
    ood_fit_images) training images, drawn with a fixed seed so the same model exports to the same bytes,
    and the mean and spread of its distances on the validation images."""
    taps = tap_blocks([name for name, _ in model.blocks()], params.ood_layers)
    train = load_split(prepared_dir, "train", num_classes, spec.image_size)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(train.labels), size=min(params.ood_fit_images, len(train.labels)), replace=False))
    fitted = tapped_features(model, taps, np.asarray(train.images[pick]), spec)
    labels = np.asarray(train.labels[pick])
    gaussians = [fit_feature_gaussian(f, labels, num_classes, params.ood_feature_rank) for f in fitted]
    val = tapped_features(
        model, taps, np.asarray(load_split(prepared_dir, "val", num_classes, spec.image_size).images), spec
    )
    return [
        LayerGaussian(tap, gaussian, *standardisation(gaussian.distances(features)))
        for tap, gaussian, features in zip(taps, gaussians, val, strict=True)
    ]


def scored_by_layers(model, layers: list[LayerGaussian]):
    """The model answering logits and its layers' combined distance from one forward pass (ScoredModel)."""
    taps = [layer.tap for layer in layers]
    taps += [tap for tap in model.taps if tap not in taps]  # the head's input is read even when it is not scored
    return scored_model(TappedBody(model, taps), model.head, layers, [taps.index(tap) for tap in model.taps])


def distance_parity(scored, session, sample: np.ndarray, spec: PreprocessSpec, batch_size: int) -> float:
    """Largest relative difference between PyTorch's and ONNX Runtime's feature distances on real images."""
    import torch

    pixels = normalize(sample, spec)
    with torch.no_grad():
        reference = np.concatenate(
            [scored(torch.from_numpy(pixels[i : i + batch_size]))[1].numpy() for i in range(0, len(pixels), batch_size)]
        )
    exported = run_batches(session, pixels, batch_size, DISTANCE_NAME)
    return float(np.max(np.abs(exported - reference) / np.maximum(np.abs(reference), 1.0)))


def run(
    params: ExportParams,
    model,
    classes: list[str],
    spec: PreprocessSpec,
    prepared_dir: Path = PREPARED_DIR,
    export_dir: Path = EXPORT_DIR,
    metrics_file: Path = METRICS_FILE,
) -> dict:
    """Writes export/ and the latency metrics; returns the report with the latency figures merged in."""
    test_images = load_split(prepared_dir, "test", len(classes), spec.image_size).images
    sample = np.asarray(test_images[: params.parity_images])
    reference = torch_logits(model, sample, spec, params.parity_batch_size)
    pixels = normalize(sample, spec)
    layers = layer_gaussians(model, params, spec, prepared_dir, len(classes))
    scored = scored_by_layers(model, layers)
    with atomic.atomic_dir(export_dir) as tmp:
        raw_path = tmp / "exported.onnx"
        exported = export_onnx(scored, spec.image_size, raw_path, (OUTPUT_NAME, DISTANCE_NAME))
        model_path = tmp / "model.onnx"
        optimize_onnx(raw_path, model_path)
        raw_path.unlink()
        session = cpu_session(model_path)
        report = {
            "opset": exported["opset"],
            "batch_axis": exported["batch_axis"],
            "input": {"name": "pixels", "shape": ["batch", 3, spec.image_size, spec.image_size], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", len(classes)]},
            "feature_distance": {
                "name": DISTANCE_NAME,
                "shape": ["batch"],
                "layers": [
                    {
                        "block": layer.tap or "head features",
                        "features": int(layer.gaussian.means.shape[1]),
                        "rank": layer.gaussian.rank,
                    }
                    for layer in layers
                ],
                "max_relative_diff": distance_parity(scored, session, sample, spec, params.parity_batch_size),
            },
            "model_bytes": model_path.stat().st_size,
            "parity": [
                check_parity(reference, session, pixels, batch).to_dict() for batch in (1, params.parity_batch_size)
            ],
            "parity_images": len(sample),
        }
        latency = {
            "latency": measure_latency(session, spec.image_size, 1, params.latency_seconds),
            "latency_batch": measure_latency(
                session, spec.image_size, params.parity_batch_size, params.latency_seconds / 2
            ),
        }
        if params.int8:
            report["int8"] = int8_variant(model_path, tmp / "model.int8.onnx", params, spec, prepared_dir, len(classes))
            if report["int8"]["kept"]:
                latency["latency_int8"] = measure_latency(
                    cpu_session(tmp / "model.int8.onnx"), spec.image_size, 1, params.latency_seconds
                )
        else:
            report["int8"] = {"kept": False, "summary": "not built (export.int8 is false)"}
        monitoring, reference, distances = monitoring_reference(session, params, spec, prepared_dir, classes, sample)
        atomic.write_json(tmp / MONITORING_FILE, monitoring)
        atomic.write_npy(tmp / REFERENCE_FILE, reference)
        atomic.write_npy(tmp / REFERENCE_DISTANCES_FILE, distances)
        report["ood"] = {
            "method": monitoring["detector"]["method"],
            "threshold": monitoring["detector"]["threshold"],
            "near_auroc": monitoring["checks"]["near"]["auroc"],
            "far_auroc": monitoring["checks"]["far"]["auroc"],
            "far_sets": sorted(monitoring["checks"]["far"]["sets"]),
            "far_auroc_by_set": {name: s["auroc"] for name, s in monitoring["checks"]["far"]["sets"].items()},
        }
        atomic.write_json(tmp / "preprocess.json", spec.to_dict())
        atomic.write_json(tmp / "classes.json", {"classes": classes})
        atomic.write_json(tmp / "export_report.json", report)
    atomic.write_json(metrics_file, latency)
    report = {**report, **latency}
    worst = max(p["max_abs_diff"] for p in report["parity"])
    log.info(
        "OOD flag (%s): AUROC %.3f on far images (%s), %.3f on near shifts of test images",
        report["ood"]["method"],
        report["ood"]["far_auroc"],
        ", ".join(report["ood"]["far_sets"]),
        report["ood"]["near_auroc"],
    )
    log.info(
        "exported opset %d, %.2f MB, parity max |diff| %.2e, batch-1 p50 %.2f ms; INT8: %s",
        report["opset"],
        report["model_bytes"] / 1e6,
        worst,
        report["latency"]["p50_ms"],
        report["int8"]["summary"],
    )
    return report


def main(args) -> None:
    from transferline.model.trained_model import load_trained_model

    model, meta = load_trained_model(MODELS_DIR)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    run(load_section("export", ExportParams, args.params), model, meta["classes"], spec)


if __name__ == "__main__":
    run_cli(main, stage_parser(__doc__.splitlines()[0]))
