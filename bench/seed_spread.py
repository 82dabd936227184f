"""Seed spread of the default recipe: test accuracy over several seeds, so one run's figure has an error bar.

Trains params.yaml's `train` section (only `seed` changes) on the prepared data through the train stage's
own core, scores each model on the test split, and writes the mean and standard deviation to
bench/results/seed_spread.{json,md}; `--append-accuracy-row` also adds the row to the strategy table
(bench/results/train_accuracy.{json,md}). `--set KEY=VALUE` changes a train param for another recipe,
`--name` names it (results in seed_spread_NAME, the table's row "NAME, seed spread"): e.g. `--set
strategy=auto --name auto` gives the advisor's pick the same error bar, with the recipe it chose per seed.
With train.reproducible the work runs in a process started with the pinned environment, as the stage
does. Full run: 5 seeds x the default recipe, ~15 min on 2 cores.

Usage: python -m bench.seed_spread [--quick] [--seeds N] [--prepared DIR] [--set KEY=VALUE ...] [--name NAME]
                                   [--append-accuracy-row]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from bench.common import results_dir, write_results
from transferline.config import TrainParams, load_section
from transferline.env import tool_env
from transferline.model.reproducibility import pinning, reexec_pinned

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREPARED = PROJECT_ROOT / "data" / "prepared"
WORK = PROJECT_ROOT / "bench" / ".work" / "seed_spread"
SEEDS = 5
DEFAULT_NAME = "partial (the default)"
QUICK = {"epochs": 1, "warmup_epochs": 0.5}  # --quick: one short epoch per seed, a smoke test


def recipe(params_file: Path, quick: bool, overrides: dict | None = None) -> TrainParams:
    values = load_section("train", TrainParams, params_file).model_dump()
    return TrainParams(**{**values, **(overrides or {}), **(QUICK if quick else {})})


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE pairs, each value read as YAML (so numbers, booleans and null keep their types)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def chosen_recipe(models_dir: Path) -> str | None:
    """The recipe `strategy: auto` chose and kept (after its validation check); None for a fixed strategy."""
    advice = models_dir / "advice.json"
    if not advice.is_file():
        return None
    record = json.loads(advice.read_text())
    return (record.get("validation") or {}).get("kept") or record["recipe"]  # no check where it chose the probe


def split_accuracy(models_dir: Path, prepared: Path, split: str) -> float:
    """Accuracy of the saved model on one split, fed through the shared numpy preprocessing."""
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.evaluation.scoring import torch_logits
    from transferline.model.trained_model import load_trained_model

    model, meta = load_trained_model(models_dir)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    data = load_split(prepared, split, len(read_dataset(prepared)["classes"]), spec.image_size)
    logits = torch_logits(model, data.images, spec, 200)
    return float((logits.argmax(1) == data.labels).mean())


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def spread(params: TrainParams, seeds: int, prepared: Path, work: Path) -> dict:
    """Train and score one model per seed 0..seeds-1; the per-seed rows and their mean and sd."""
    from bench.train_bench import train_in

    runs = []
    for seed in range(seeds):
        base = work / f"seed{seed}"
        metrics, wall = train_in(params.model_copy(update={"seed": seed}), prepared, base)
        record = json.loads((base / "train_run.json").read_text())
        runs.append(
            {
                "seed": seed,
                "test_accuracy": split_accuracy(base / "models", prepared, "test"),
                "val_accuracy": metrics["val_accuracy"],
                "best_epoch": metrics["best_epoch"],
                "epochs_run": metrics["epochs_run"],
                "wall_seconds": wall,
                "train_images_per_s": metrics["train_images_per_s"],
                "model_sha256": record["model_sha256"],
                "chosen": chosen_recipe(base / "models"),
            }
        )
        logging.getLogger("bench").info("seed %d: %s", seed, runs[-1])
    return {
        "recipe": params.model_dump(mode="json"),
        "prepared": shown_path(prepared),
        "data_version": json.loads((prepared / "dataset.json").read_text())["data_version"],
        "seeds": seeds,
        "runs": runs,
        "test_accuracy": summary([r["test_accuracy"] for r in runs]),
        "val_accuracy": summary([r["val_accuracy"] for r in runs]),
        "environment": record["environment"],
    }


def accuracy_row(result: dict) -> dict:
    """The strategy table's row for the spread: means, with the test sd alongside."""
    runs = result["runs"]
    rates = [r["train_images_per_s"] for r in runs if r["train_images_per_s"] is not None]
    return {
        "overrides": {"seed": f"0..{result['seeds'] - 1}"},
        "test_accuracy": result["test_accuracy"]["mean"],
        "test_accuracy_sd": result["test_accuracy"]["sd"],
        "val_accuracy": result["val_accuracy"]["mean"],
        "best_epoch": statistics.median(r["best_epoch"] for r in runs),
        "epochs_run": statistics.median(r["epochs_run"] for r in runs),
        "wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs),
        "train_images_per_s": statistics.median(rates) if rates else None,
    }


def append_accuracy_row(result: dict, name: str = DEFAULT_NAME) -> Path:
    """Add (or replace) the spread's row in train_accuracy.{json,md}, keeping every other row."""
    from bench.train_bench import accuracy_markdown, measured_now

    path = results_dir() / "train_accuracy.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `python -m bench.train_bench accuracy` first, the row joins its table")
    table = json.loads(path.read_text())  # its machine record stays the full run's; the row says its own
    table["runs"][f"{name}, seed spread"] = {**accuracy_row(result), "measured": measured_now()}
    return write_results("train_accuracy", table, accuracy_markdown(table))


def shown_path(path: Path) -> str:
    """The data's path relative to the project when it is inside it: a report names no machine's folders."""
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else resolved.name


def markdown(result: dict, name: str = DEFAULT_NAME) -> str:
    recipe_, env = result["recipe"], result["environment"]
    test, val = result["test_accuracy"], result["val_accuracy"]
    overrides = result.get("overrides") or {}
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
    chosen = sorted({r["chosen"] for r in result["runs"] if r.get("chosen")})
    what = (
        f"strategy auto (chose {', '.join(chosen)})"
        if recipe_["strategy"] == "auto"
        else f"{recipe_['strategy']}, {recipe_['epochs']} epochs"
    )
    return "\n".join(
        [
            f"# Seed spread of {'the default recipe' if name == DEFAULT_NAME else name} (CPU)",
            "",
            f"{recipe_['backbone']}, {what}, params.yaml's train section"
            + (f" with {changed}" if changed else "")
            + f" and seed 0..{result['seeds'] - 1}, data `{result['prepared']}` "
            f"(version {result.get('data_version')}). "
            f"Trained on {env['cpu']['model']} "
            f"({env['threads']} threads, reproducible {'on' if env['reproducible'] else 'off'}, kernels "
            f"{env['aten_cpu_capability']}).",
            "",
            f"**Test accuracy {test['mean']:.4f} ± {test['sd']:.4f}** (mean ± sd over {result['seeds']} seeds); "
            f"val accuracy {val['mean']:.4f} ± {val['sd']:.4f}.",
            "",
            "| seed | test accuracy | val accuracy | best epoch / run | wall time | model.pt sha256 |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['seed']} | {r['test_accuracy']:.4f} | {r['val_accuracy']:.4f} | {r['best_epoch']} / "
                f"{r['epochs_run']} | {r['wall_seconds']:.0f} s | `{r['model_sha256'][:16]}` |"
                for r in result["runs"]
            ),
            "",
            "Two recipes whose test accuracies differ by less than about two of these sds are not told apart by "
            "one run each.",
            "",
        ]
    )


def run(quick: bool = False) -> dict:
    """For `python -m bench`: the spread in its own process (pinned as the stage is), then its results."""
    subprocess.run(
        [sys.executable, "-m", "bench.seed_spread", *(["--quick"] if quick else [])],
        cwd=PROJECT_ROOT,
        env={**tool_env(), "PYTHONPATH": str(PROJECT_ROOT)},
        check=True,
    )
    return json.loads((results_dir() / "seed_spread.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short epoch per seed, for a smoke test")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--prepared", type=Path, default=PREPARED, help="prepared data (default: data/prepared)")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--work-dir", type=Path, default=WORK, help="the per-seed models and checkpoints")
    parser.add_argument("--append-accuracy-row", action="store_true", help="also add the row to train_accuracy")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="change a train param"
    )
    parser.add_argument("--name", default=None, help="the recipe's name, for a recipe changed with --set")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds: a spread needs at least 2")
    if args.overrides and not args.name:
        parser.error("--set: name the recipe with --name, so its results do not replace the default's")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = recipe(args.params, args.quick, overrides)
    reexec_pinned(pinning(params.reproducible, params.num_threads))  # as the train stage does
    work = args.work_dir if not args.name else args.work_dir.parent / f"{args.work_dir.name}_{args.name}"
    result = {**spread(params, args.seeds, args.prepared, work), "overrides": overrides}
    name = args.name or DEFAULT_NAME
    write_results(f"seed_spread_{args.name}" if args.name else "seed_spread", result, markdown(result, name))
    if args.append_accuracy_row:
        append_accuracy_row(result, name)
    test = result["test_accuracy"]
    print(f"test accuracy {test['mean']:.4f} ± {test['sd']:.4f} over {args.seeds} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
