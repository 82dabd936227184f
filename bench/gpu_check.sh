#!/usr/bin/env bash
# GPU check of the training loop, prepared to run in under 5 minutes on one CUDA GPU:
#   1. a few hundred steps of full fine-tuning at 224 px with the stage's own loop (uint8 batches
#      resident on the GPU, normalisation + augmentation on the GPU, AMP, channels_last), for
#      mobilenet_v2 and resnet50: images/s, the bare model's rate, peak memory, AMP/channels_last state;
#   2. the ONNX export of the trained model under ONNX Runtime's CUDA provider: which provider
#      really ran, images/s, and the max logit difference to PyTorch.
# Weights are random (pretrained: false): speed does not depend on them, and the GPU machine may
# have no hub cache. Data are synthetic uint8 images. On a machine without CUDA it stops at once
# with "no CUDA device" and exit code 3. Results: stdout, and bench/results/gpu_check.json.
# Usage: bash bench/gpu_check.sh [steps per backbone, default 200]
#        GPU_CHECK_CPU_DRY_RUN=1 bash bench/gpu_check.sh   (the same code, tiny, on CPU: checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 ITERATIVE_DO_NOT_TRACK=1
STEPS="${1:-200}" exec "$PYTHON" - <<'PY'
import json, os, sys, time
from pathlib import Path

import torch

DRY = os.environ.get("GPU_CHECK_CPU_DRY_RUN") == "1"
if not torch.cuda.is_available() and not DRY:
    print("no CUDA device: bench/gpu_check.sh needs one NVIDIA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
    sys.exit(3)

import numpy as np

from transferline.model.backbones import build_model
from transferline.config import TrainParams
from transferline.data.preprocessing import PreprocessSpec
from transferline.model.strategies import make_plan
from transferline.model.training import (
    BatchSource, SplitData, build_optimizer, build_scheduler, configure_threads, model_input,
    predict_logits, resolve_runtime, train_one_epoch,
)

STEPS = 4 if DRY else int(os.environ["STEPS"])
SIZE, BATCH, N_IMAGES = (64, 8, 64) if DRY else (224, 128, 4096)
DEVICE = "cpu" if DRY else "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
spec = PreprocessSpec(SIZE, "crop", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
labels = rng.integers(0, 10, N_IMAGES).astype(np.int64)
name = "CPU dry run" if DRY else torch.cuda.get_device_name(0)
report = {"device": name, "torch": torch.__version__, "image_size": SIZE, "batch_size": BATCH}
print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)

last_model = None
for backbone in ("mobilenet_v2", "resnet50"):
    params = TrainParams(
        backbone=backbone, pretrained=False, strategy="full", batch_size=BATCH, epochs=10, lr=1e-3, device=DEVICE
    )
    runtime = resolve_runtime(params)
    configure_threads(params, runtime)
    torch.manual_seed(0)
    model, _ = build_model(backbone, 10, pretrained=False)
    model.to(runtime.device).to(memory_format=torch.channels_last)
    plan = make_plan(model, params)
    plan.apply(model, 0)
    optimizer = build_optimizer(plan, params)
    steps_per_epoch = N_IMAGES // BATCH
    scheduler = build_scheduler(optimizer, params, steps_per_epoch)
    scaler = torch.amp.GradScaler(DEVICE, enabled=runtime.amp_dtype == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator().manual_seed(0)
    source = BatchSource(SplitData(images, labels), runtime.device)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    args = (model, source, spec, params, runtime, optimizer, scheduler, scaler, criterion, generator)
    train_one_epoch(*args, 5, "warm-up")  # cuDNN autotuning, allocator
    done, rates, start = 0, [], time.perf_counter()
    while done < STEPS:
        steps = min(steps_per_epoch, STEPS - done)
        rates.append(train_one_epoch(*args, steps, backbone)["images_per_s"])
        done += steps
    loop_seconds = time.perf_counter() - start
    # the bare model on one ready batch, same model and settings
    x = model_input(source.get(torch.arange(BATCH))[0], spec, runtime)
    y = source.get(torch.arange(BATCH))[1]
    sync()
    t0 = time.perf_counter()
    bare_steps = 3 if DRY else 50
    for _ in range(bare_steps):
        with torch.autocast(DEVICE, dtype=runtime.amp_dtype, enabled=runtime.amp_dtype is not None):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    sync()
    bare = bare_steps * BATCH / (time.perf_counter() - t0)
    entry = {
        "steps": done,
        "loop_images_per_s": float(np.median(rates)),
        "model_only_images_per_s": bare,
        "loop_vs_model_only": float(np.median(rates)) / bare,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
        "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off",
        "channels_last": runtime.channels_last and x.is_contiguous(memory_format=torch.channels_last),
        "data_resident_on_gpu": source.resident,
        "seconds": loop_seconds,
    }
    report[backbone] = entry
    print(f"{backbone}: {json.dumps(entry)}", flush=True)
    last_model = (backbone, model)

# ONNX Runtime with the CUDA provider, on the last model
try:
    import onnxruntime as ort

    from transferline.evaluation.onnx_export import export_onnx

    backbone, model = last_model
    model = model.float().eval().to("cpu").to(memory_format=torch.contiguous_format)
    available = ort.get_available_providers()
    onnx_report = {"available_providers": available}
    if "CUDAExecutionProvider" not in available and not DRY:
        onnx_report["error"] = "CUDAExecutionProvider not available in this onnxruntime build"
    else:
        target = Path("bench/.work/gpu_check/model.onnx")
        target.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, SIZE, target)
        wanted = ["CPUExecutionProvider"] if DRY else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        session = ort.InferenceSession(str(target), providers=wanted)
        onnx_report["active_providers"] = session.get_providers()
        batch = model_input(torch.from_numpy(images[:32]), spec, resolve_runtime(TrainParams(device="cpu"))).contiguous()
        feed = {session.get_inputs()[0].name: batch.numpy()}
        for _ in range(5):
            session.run(None, feed)
        t0 = time.perf_counter()
        for _ in range(30):
            out = session.run(None, feed)[0]
        onnx_report["images_per_s_batch32"] = 30 * 32 / (time.perf_counter() - t0)
        with torch.no_grad():
            reference = model(batch).numpy()
        onnx_report["max_abs_logit_diff_vs_torch_cpu"] = float(np.abs(out - reference).max())
        onnx_report["backbone"] = backbone
    report["onnxruntime"] = onnx_report
    print(f"onnxruntime: {json.dumps(onnx_report)}", flush=True)
except Exception as exc:  # report it: the training part above is still valid
    report["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"onnxruntime check failed: {exc}", flush=True)

out = Path("bench/.work/gpu_check/dry_run.json" if DRY else "bench/results/gpu_check.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=2) + "\n")
print(f"written {out}")
PY
