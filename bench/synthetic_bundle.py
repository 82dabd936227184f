"""A stand-in for the pipeline's export and gate outputs, for the service's tests and benchmarks.

Writes what the export stage writes (model.onnx through the same `export_onnx` and ONNX Runtime
optimisation, preprocess.json, classes.json, export_report.json) and what the gate writes
(decision.json, model_card.md), for any torch model: the service can then be exercised without
training one. Not a way to ship models: the pipeline's own stages do that.
"""

from __future__ import annotations

import json
from pathlib import Path

from transferline.data.preprocessing import PreprocessSpec
from transferline.evaluation.onnx_export import export_onnx, optimize_onnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mobilenet_v2(num_classes: int, seed: int = 0, image_size: int | None = None, head_scale: float = 5.0):
    """torchvision's MobileNetV2, random init (seeded): the project's default backbone, untrained.

    With `image_size`, its BatchNorm statistics are re-estimated on synthetic images and the head
    widened: at random init every image gives nearly the same output (ties everywhere), whereas this
    model's answers depend on the image with clear margins, as a trained model's do.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    if image_size is not None:
        _calibrate(model, image_size, seed, head_scale)
    return model.eval()


def _calibrate(model, image_size: int, seed: int, head_scale: float) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from transferline.data.preprocessing import normalize

    spec = PreprocessSpec(image_size, "crop", IMAGENET_MEAN, IMAGENET_STD)
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            coarse = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)  # smooth blobs of colour, photo-like
            pixels = np.stack(
                [
                    np.asarray(Image.fromarray(c).resize((image_size, image_size), Image.Resampling.BILINEAR))
                    for c in coarse
                ]
            )
            model(torch.from_numpy(normalize(pixels, spec)))
        model.classifier[-1].weight.mul_(head_scale)


def write_export_dir(model, classes: list[str], image_size: int, export_dir: Path) -> PreprocessSpec:
    """model.onnx, preprocess.json, classes.json and export_report.json, as the export stage lays them out."""
    export_dir.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(image_size, "crop", IMAGENET_MEAN, IMAGENET_STD)
    raw = export_dir / "exported.onnx"
    exported = export_onnx(model, image_size, raw)
    optimize_onnx(raw, export_dir / "model.onnx")
    raw.unlink()
    report = {
        "opset": exported["opset"],
        "batch_axis": exported["batch_axis"],
        "model_bytes": (export_dir / "model.onnx").stat().st_size,
        "note": "synthetic bundle (bench/synthetic_bundle.py): no parity or latency measured",
    }
    _write_json(export_dir / "preprocess.json", spec.to_dict())
    _write_json(export_dir / "classes.json", {"classes": classes})
    _write_json(export_dir / "export_report.json", report)
    write_monitoring(export_dir, spec)
    return spec


def write_monitoring(export_dir: Path, spec: PreprocessSpec) -> None:
    """An OOD detector and a drift reference made from random smooth images: the served bundle carries both,
    like a real export (whose reference is the validation split)."""
    import numpy as np

    from transferline.evaluation.onnx_classifier import OnnxClassifier
    from transferline.monitoring.reference import build_detector, predicted_class_shares
    from transferline.monitoring.shifts import noise_images

    classes = json.loads((export_dir / "classes.json").read_text())["classes"]
    logits = OnnxClassifier.open(export_dir / "model.onnx", classes, spec).logits(noise_images(64, spec.image_size, 7))
    shares = [round(float(x), 6) for x in predicted_class_shares(logits, len(classes))]
    np.save(export_dir / "reference_logits.npy", logits.astype(np.float32))
    _write_json(
        export_dir / "monitoring.json",
        {
            "detector": build_detector(logits, rejection_rate=0.05).to_dict(),
            "drift_reference": {"file": "reference_logits.npy", "images": len(logits), "class_shares": shares},
        },
    )


def write_gate_dir(gate_dir: Path, passed: bool, lineage: dict, accuracy: float = 0.9) -> None:
    """decision.json and model_card.md in the gate stage's format, passed or rejected as asked."""
    gate_dir.mkdir(parents=True, exist_ok=True)
    verdict = "pass" if passed else "fail"
    check = {
        "name": "accuracy",
        "value": accuracy,
        "threshold": 0.8,
        "comparison": ">=",
        "verdict": verdict,
        "detail": f"test accuracy {accuracy} >= 0.8",
    }
    decision = {
        "passed": passed,
        "reason": f"passed: {check['detail']}" if passed else f"rejected: accuracy failed ({check['detail']})",
        "checks": [check],
        "champion": None,
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy, "min_class_recall": accuracy, "n": 100},
        "lineage": lineage,
    }
    _write_json(gate_dir / "decision.json", decision)
    (gate_dir / "model_card.md").write_text(f"# Synthetic model\n\n{decision['reason']}\n")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
