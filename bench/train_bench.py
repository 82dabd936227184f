"""Training benchmarks on the default data (run `dvc repro prepare` first), on this machine's CPU.

- throughput: images/s of real training epochs (the stage's own loop: uint8 batches, normalisation,
  augmentation, AdamW, schedule) against the model alone (forward + backward, and + optimizer step)
  on a fixed, ready batch of the same size, same model, same process, interleaved so that load
  from other processes hits both alike. Writes bench/results/train.{json,md}.
- probe: seconds to fit the feature_extraction head on the cached features (and scikit-learn's
  LogisticRegression on the same features, for reference). Also in train.{json,md}.
- accuracy: the default recipe under each strategy, plus a random-init baseline: test accuracy
  and wall time. Writes bench/results/train_accuracy.{json,md}. Takes ~20 min on 2 cores.
- sizes: the default recipe (and `auto`) against a plain fine-tuning script at 400 and 800 images a class,
  each size ingested and prepared by the stages' own code. Writes bench/results/train_sizes.{json,md}; ~35 min.

Usage: python -m bench.train_bench [--quick] [throughput|probe|accuracy|sizes ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

import torch

from bench.common import machine, results_dir, write_results
from transferline.config import TrainParams, load_section

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREPARED = PROJECT_ROOT / "data" / "prepared"
WORK = PROJECT_ROOT / "bench" / ".work" / "train"
ACCURACY_RUNS = {
    "feature_extraction": {"strategy": "feature_extraction"},
    "partial (the default)": {"strategy": "partial"},
    "full": {"strategy": "full", "frozen_blocks": 0},
    "discriminative": {"strategy": "discriminative", "frozen_blocks": 0},
    "discriminative + gradual unfreezing": {"strategy": "discriminative", "frozen_blocks": 0, "gradual_unfreeze": True},
    "full, random init (baseline)": {"strategy": "full", "frozen_blocks": 0, "pretrained": False},
    # the advisor's pick from the data (transferline/model/advisor_rule.json), its signals and check included
    "auto": {"strategy": "auto"},
    # DESIGN.md's plain script, on this data: AdamW 3e-4, one-cycle, label smoothing 0.1, 3 epochs, no augmentation
    "plain-script recipe": {
        "strategy": "full",
        "frozen_blocks": 0,
        "lr": 3e-4,
        "epochs": 3,
        "warmup_epochs": 0.9,
        "weight_decay": 0.01,
        "augment": {"enabled": False},
        "early_stopping_patience": None,
        "channels_last": False,
    },
}


def default_params(**overrides) -> TrainParams:
    values = load_section("train", TrainParams, PROJECT_ROOT / "params.yaml").model_dump()
    values.update(overrides)
    return TrainParams(**values)


def load_default_data():
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.data.preprocessing import PreprocessSpec

    dataset = read_dataset(PREPARED)
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    splits = {n: load_split(PREPARED, n, len(dataset["classes"]), spec.image_size) for n in ("train", "val", "test")}
    return dataset, spec, splits


def bench_throughput(quick: bool) -> dict:
    """Real epochs vs the bare model on the same batch size, alternated `rounds` times."""
    from transferline.model.backbones import build_model
    from transferline.model.strategies import make_plan
    from transferline.model.training import (
        BatchSource,
        build_optimizer,
        build_scheduler,
        configure_threads,
        model_input,
        resolve_runtime,
        train_one_epoch,
    )

    params = default_params(strategy="full")
    dataset, spec, splits = load_default_data()
    runtime = resolve_runtime(params)
    threads = configure_threads(params, runtime)
    torch.manual_seed(0)
    model, _ = build_model(params.backbone, len(dataset["classes"]), params.pretrained)
    model.to(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    plan = make_plan(model, params)
    plan.apply(model, 0)
    optimizer = build_optimizer(plan, params)
    train = splits["train"]
    steps = len(train) // params.batch_size
    if quick:
        steps = min(steps, 8)
    scheduler = build_scheduler(optimizer, params, steps * 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    generator = torch.Generator().manual_seed(0)
    source = BatchSource(train, runtime.device)
    fixed_x = model_input(source.get(torch.arange(params.batch_size))[0], spec, runtime)
    fixed_y = source.get(torch.arange(params.batch_size))[1]

    def model_only(with_step: bool) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = criterion(model(fixed_x), fixed_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if with_step:
                optimizer.step()
        return steps * params.batch_size / (time.perf_counter() - start)

    model_only(True)  # warm-up: oneDNN primitives, allocator
    rounds = 1 if quick else 3
    epochs, bare, bare_step = [], [], []
    for _ in range(rounds):
        stats = train_one_epoch(
            model, source, spec, params, runtime, optimizer, scheduler, scaler, criterion, generator, steps, "bench"
        )
        epochs.append(stats["images_per_s"])
        bare.append(model_only(False))
        bare_step.append(model_only(True))
    result = {
        "backbone": params.backbone,
        "image_size": spec.image_size,
        "batch_size": params.batch_size,
        "steps_per_measure": steps,
        "threads": threads,
        "runtime": runtime.describe(),
        "augment": params.augment.model_dump(),
        "epoch_images_per_s": epochs,
        "model_fwd_bwd_images_per_s": bare,
        "model_fwd_bwd_step_images_per_s": bare_step,
    }
    result["ratio_vs_fwd_bwd"] = statistics.median(epochs) / statistics.median(bare)
    result["ratio_vs_fwd_bwd_step"] = statistics.median(epochs) / statistics.median(bare_step)
    return result


def bench_probe(quick: bool) -> dict:
    """Head fit on the default data's features (computed here, or read from the stage's cache)."""
    from sklearn.linear_model import LogisticRegression

    from transferline.model.backbones import build_model, feature_dim
    from transferline.model.features import cache_key, cached_features, fit_probe
    from transferline.model.training import configure_threads, resolve_runtime

    params = default_params(strategy="feature_extraction")
    dataset, spec, splits = load_default_data()
    runtime = resolve_runtime(params)
    configure_threads(params, runtime)
    model, weights = build_model(params.backbone, len(dataset["classes"]), params.pretrained)
    key = cache_key(params.backbone, weights, dataset["data_version"], dataset["preprocess"], feature_dim(model))
    start = time.perf_counter()
    features, from_cache = cached_features(
        model, {"train": splits["train"], "val": splits["val"]}, spec, runtime, WORK / "features", key, 128
    )
    feature_seconds = time.perf_counter() - start
    repeats = 1 if quick else 3
    fits = [
        fit_probe(features["train"], splits["train"].labels, features["val"], splits["val"].labels, 10, params.probe_l2)
        for _ in range(repeats)
    ]
    result = {
        "features": {"train": list(features["train"].shape), "from_cache": from_cache, "seconds": feature_seconds},
        "probe_l2": list(params.probe_l2),
        "lbfgs_seconds": [f.seconds for f in fits],
        "lbfgs_val_accuracy": fits[0].val_accuracy,
        "lbfgs_l2": fits[0].l2,
    }
    # scikit-learn on the same standardised features and grid (C = 1 / (l2 * n)), for reference
    mean, std = features["train"].mean(0), features["train"].std(0) + 1e-6
    xt, xv = (features["train"] - mean) / std, (features["val"] - mean) / std
    start, best = time.perf_counter(), 0.0
    for l2 in params.probe_l2:
        clf = LogisticRegression(C=1.0 / (l2 * len(xt)), max_iter=1000).fit(xt, splits["train"].labels)
        best = max(best, clf.score(xv, splits["val"].labels))
    result["sklearn_seconds"] = time.perf_counter() - start
    result["sklearn_val_accuracy"] = best
    return result


def train_in(params: TrainParams, prepared: Path, base: Path) -> tuple[dict, float]:
    """One training by the train stage's own code on `prepared`, every output under `base`: its metrics and
    wall seconds. `base` is emptied first: a timed run must not resume from an earlier run's checkpoint or
    reuse its feature cache (the figures would be of the rest of a run)."""
    from stages import train as train_stage

    shutil.rmtree(base, ignore_errors=True)
    start = time.perf_counter()
    metrics = train_stage.run(
        params,
        prepared_dir=prepared,
        models_dir=base / "models",
        features_dir=base / "features",
        checkpoint_dir=base / "checkpoints",
        metrics_file=base / "train.json",
        live_dir=None,
    )
    return metrics, time.perf_counter() - start


def run_params(overrides: dict, quick: bool) -> TrainParams:
    """The default recipe with a row's overrides (two short epochs in quick mode)."""
    return default_params(**{**overrides, **({"epochs": 2, "warmup_epochs": 0.5} if quick else {})})


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def test_accuracy(models_dir: Path, splits) -> float:
    """Accuracy of the saved model on the test split, fed through the shared numpy preprocessing."""
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.evaluation.scoring import torch_logits
    from transferline.model.trained_model import load_trained_model

    model, meta = load_trained_model(models_dir)
    logits = torch_logits(model, splits["test"].images, PreprocessSpec.from_dict(meta["preprocess"]), 200)
    return float((logits.argmax(1) == splits["test"].labels).mean())


def run_row(overrides: dict, metrics: dict, wall: float, base: Path, splits) -> dict:
    """One training's row of a results table: what it changed, its test accuracy and its metrics."""
    return {
        "overrides": overrides,
        "test_accuracy": test_accuracy(base / "models", splits),
        "val_accuracy": metrics["val_accuracy"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "wall_seconds": wall,
        "train_images_per_s": metrics["train_images_per_s"],
    }


def measured_now() -> dict[str, str]:
    """When and on which CPU a row added to an existing table was measured."""
    host = machine()
    return {"date": host["date"], "cpu": host["cpu"]}


def bench_accuracy(quick: bool, only: list[str] | None = None) -> dict:
    """Every run in ACCURACY_RUNS, or only the named ones, merged into the previous results."""

    _, _, splits = load_default_data()
    previous_file = results_dir() / "train_accuracy.json"
    previous = json.loads(previous_file.read_text()) if only and previous_file.is_file() else {}
    rows = previous.get("runs", {})
    for name, overrides in ACCURACY_RUNS.items():
        if only and name not in only:
            continue
        base = WORK / "accuracy" / folder_name(name)
        metrics, wall = train_in(run_params(overrides, quick), PREPARED, base)
        rows[name] = run_row(overrides, metrics, wall, base, splits)
        if previous:  # a row run alone says when and where; the table's date stays the full run's
            rows[name]["measured"] = measured_now()
        logging.getLogger("bench").info("%s: %s", name, rows[name])
    # ACCURACY_RUNS in their order, then rows other benchmarks added (bench/seed_spread.py's)
    rows = {name: rows[name] for name in [*ACCURACY_RUNS, *rows] if name in rows}
    return {
        "machine": previous.get("machine") or machine(),
        "recipe": default_params().model_dump(mode="json"),
        "runs": rows,
        "test_images": len(splits["test"]),
    }


SIZES = (800, 400)  # images per class: twice the default, then the default (the table sorts them)
SIZE_RUNS = {
    "partial (the default)": ACCURACY_RUNS["partial (the default)"],
    "plain-script recipe": ACCURACY_RUNS["plain-script recipe"],
    "partial, 10 epochs (the former default)": {"strategy": "partial", "epochs": 10},
    "auto": ACCURACY_RUNS["auto"],
}


def prepared_at(per_class: int) -> Path:
    """The default data at `per_class` images a class, through the ingest and prepare stages' own code
    with params.yaml's other values (made once under bench/.work)."""
    from stages import ingest, prepare
    from transferline.config import IngestParams, PrepareParams, PreprocessParams

    base = WORK / "sizes" / str(per_class)
    if not (base / "prepared" / "dataset.json").is_file():
        params_file = PROJECT_ROOT / "params.yaml"
        ingest_params = load_section("ingest", IngestParams, params_file).model_copy(update={"per_class": per_class})
        ingest.run(ingest_params, base / "raw", base / "ingest.json")
        prepare.run(
            load_section("prepare", PrepareParams, params_file),
            load_section("preprocess", PreprocessParams, params_file),
            base / "raw",
            base / "prepared",
            base / "prepare.json",
        )
    return base / "prepared"


def bench_sizes(quick: bool) -> dict:
    """The default recipe against the plain script at 400 and 800 images a class, each on that size's own
    split (the test split grows with the data), written after every run so a stopped bench keeps its rows."""
    from transferline.data.pixel_cache import load_split, read_dataset

    previous = results_dir() / "train_sizes.json"
    result = json.loads(previous.read_text()) if previous.is_file() and not quick else {"runs": []}
    result.pop("machine", None)  # write_results records this run's
    for per_class in SIZES if not quick else (20,):
        prepared = prepared_at(per_class)
        dataset = read_dataset(prepared)
        size = dataset["preprocess"]["image_size"]
        splits = {n: load_split(prepared, n, len(dataset["classes"]), size) for n in ("train", "test")}
        for name, overrides in SIZE_RUNS.items():
            base = WORK / "sizes" / str(per_class) / folder_name(name)
            metrics, wall = train_in(run_params(overrides, quick), prepared, base)
            row = {
                "per_class": per_class,
                "recipe": name,
                "train_images": len(splits["train"]),
                "test_images": len(splits["test"]),
                **run_row(overrides, metrics, wall, base, splits),
            }
            result["runs"] = [r for r in result["runs"] if (r["per_class"], r["recipe"]) != (per_class, name)]
            result["runs"].append(row)
            logging.getLogger("bench").info("%s at %d a class: %s", name, per_class, row)
            write_results("train_sizes", result, sizes_markdown(result))
    return result


def sizes_markdown(result: dict) -> str:
    lines = [
        "# The default recipe against a plain fine-tuning script, at 400 and 800 images a class (CPU)",
        "",
        "Fashion-MNIST through the ingest and prepare stages at each size (params.yaml otherwise), MobileNetV2; "
        "each size's own test split. The plain script: full fine-tuning, AdamW 3e-4, one-cycle, label smoothing "
        "0.1, 3 epochs, no augmentation, PyTorch's default memory layout. The default recipe trains 5 epochs; "
        "10 was the default until these rows showed what the second five add. `auto`: `train.strategy: auto`, "
        "its signals, proposal and validation check included in its time.",
        "",
        "| images a class | recipe | train images | test accuracy (test images) | val accuracy | best epoch / run "
        "| wall time | train images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(result["runs"], key=lambda r: (r["per_class"], r["recipe"])):
        lines.append(
            f"| {row['per_class']} | {row['recipe']} | {row['train_images']} | {row['test_accuracy']:.4f} "
            f"({row['test_images']}) | {row['val_accuracy']:.4f} | {row['best_epoch']} / {row['epochs_run']} | "
            f"{row['wall_seconds']:.0f} s | {_rate(row.get('train_images_per_s'))} |"
        )
    return "\n".join(lines) + "\n"


def throughput_markdown(result: dict) -> str:
    t, p = result.get("throughput"), result.get("probe")
    lines = ["# Training benchmarks (CPU)", ""]
    if t:
        lines += [
            f"{t['backbone']}, {t['image_size']} px, batch {t['batch_size']}, {t['threads']} threads, "
            f"{t['runtime']}; augmentation {'on' if t['augment']['enabled'] else 'off'}. Each figure: "
            f"{t['steps_per_measure']} steps, {len(t['epoch_images_per_s'])} interleaved rounds, median.",
            "",
            "| measured | images/s (median) | rounds |",
            "|---|---|---|",
            f"| real training epoch (stage loop) | {statistics.median(t['epoch_images_per_s']):.1f} | "
            f"{', '.join(f'{v:.0f}' for v in t['epoch_images_per_s'])} |",
            f"| model only: forward + backward | {statistics.median(t['model_fwd_bwd_images_per_s']):.1f} | "
            f"{', '.join(f'{v:.0f}' for v in t['model_fwd_bwd_images_per_s'])} |",
            f"| model only: forward + backward + AdamW step | "
            f"{statistics.median(t['model_fwd_bwd_step_images_per_s']):.1f} | "
            f"{', '.join(f'{v:.0f}' for v in t['model_fwd_bwd_step_images_per_s'])} |",
            "",
            f"Real epoch / model-only: **{t['ratio_vs_fwd_bwd']:.0%}** of forward+backward, "
            f"**{t['ratio_vs_fwd_bwd_step']:.0%}** of forward+backward+step (target >= 90%).",
            "",
        ]
    if p:
        lines += [
            "## Feature-extraction head fit",
            "",
            f"Features {p['features']['train']} ({'from the cache' if p['features']['from_cache'] else 'computed'}, "
            f"{p['features']['seconds']:.1f} s). L2 grid {p['probe_l2']}, best on val.",
            "",
            "| fitter | seconds | val accuracy |",
            "|---|---|---|",
            f"| torch L-BFGS, full batch, warm-started (the stage's) | "
            f"{statistics.median(p['lbfgs_seconds']):.2f} | {p['lbfgs_val_accuracy']:.4f} (l2={p['lbfgs_l2']}) |",
            f"| scikit-learn LogisticRegression (lbfgs), same grid | {p['sklearn_seconds']:.2f} | "
            f"{p['sklearn_val_accuracy']:.4f} |",
            "",
            "Target: head fit <= 10 s.",
            "",
        ]
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def accuracy_markdown(result: dict) -> str:
    recipe = result["recipe"]
    runs = result["runs"]
    lines = [
        "# Transfer strategies on the default data (CPU)",
        "",
        f"Fashion-MNIST subset from `dvc repro prepare` (train/val/test from dataset.json), {recipe['backbone']}, "
        f"test split of {result['test_images']} images never seen in training or model selection. Recipe: the "
        f"params.yaml defaults (lr {recipe['lr']}, {recipe['scheduler']}, {recipe['epochs']} epochs, batch "
        f"{recipe['batch_size']}, label smoothing {recipe['label_smoothing']}, augmentation crop>="
        f"{recipe['augment']['crop_scale_min']}), changed only as the overrides say.",
        "",
        "| strategy | overrides | test accuracy | val accuracy | best epoch / run | wall time | train images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["runs"].items():
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items())
        sd = f" ± {row['test_accuracy_sd']:.4f}" if "test_accuracy_sd" in row else ""
        lines.append(
            f"| {name} | {overrides} | {row['test_accuracy']:.4f}{sd} | {row['val_accuracy']:.4f} | "
            f"{row['best_epoch']} / {row['epochs_run']} | {row['wall_seconds']:.0f} s | "
            f"{_rate(row.get('train_images_per_s'))} |"
        )
    n = result["test_images"]
    host = result.get("machine") or machine()
    lines += [
        "",
        f"Measured {host['date']} on {host['cpu']}, {host['cores']} cores"
        + "".join(
            f"; {name} alone on {row['measured']['date']} ({row['measured']['cpu']})"
            for name, row in runs.items()
            if "measured" in row
        )
        + ".",
        "",
        f"How to read it: with {n} test images one standard error is about "
        f"{100 * (0.88 * 0.12 / n) ** 0.5:.1f} points, so rows within ~2.5 points are not distinguishable; the "
        "default recipe's spread over seeds is in seed_spread.md. These rows train in this process with the "
        "CPU kernels uncapped (`train.reproducible` caps them when `python -m stages.train` starts), so the "
        "default row differs from the committed model (gate/model_card.md) by kernel rounding, within that "
        "spread.",
    ]
    plain, full = runs.get("plain-script recipe"), runs.get("full")
    if plain and full and plain.get("train_images_per_s") and full.get("train_images_per_s"):
        lines[-1] += (
            " The plain-script row keeps PyTorch's default NCHW layout (channels_last=false): its full "
            f"fine-tuning ran at {plain['train_images_per_s']:.0f} train images/s against "
            f"{full['train_images_per_s']:.0f} for the full row in channels-last, the default."
        )
    lines[-1] += " Wall time and images/s also depend on what else ran on the machine."
    return "\n".join(lines) + "\n"


def run(
    quick: bool = False, parts: tuple[str, ...] = ("throughput", "probe", "accuracy"), only: list[str] | None = None
) -> dict:
    results = {}
    if "throughput" in parts or "probe" in parts:
        previous = results_dir() / "train.json"
        speed = json.loads(previous.read_text()) if previous.is_file() else {}
        speed.pop("machine", None)
        if "throughput" in parts:
            speed["throughput"] = bench_throughput(quick)
        if "probe" in parts:
            speed["probe"] = bench_probe(quick)
        write_results("train", speed, throughput_markdown(speed))
        results.update(speed)
    if "sizes" in parts:
        results["sizes"] = bench_sizes(quick)
    if "accuracy" in parts:
        accuracy = bench_accuracy(quick, only)
        write_results("train_accuracy", accuracy, accuracy_markdown(accuracy))
        results["accuracy"] = accuracy
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=["throughput", "probe", "accuracy", "sizes", []])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--only", action="append", choices=list(ACCURACY_RUNS), help="re-run just this accuracy row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(args.quick, tuple(args.parts or ("throughput", "probe", "accuracy")), args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
