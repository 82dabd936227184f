"""Hyperparameter-search benchmarks on the default data (Fashion-MNIST subset, 96 px), head-only trials.

1. Trials per minute of a head-only search on features computed once per study, vs the same search
   recomputing the backbone features in every trial (measured in the same run).
2. Best validation accuracy found by random vs TPE sampling at equal trial counts.

Run from the project root with data/prepared present (`dvc repro prepare`). Writes bench/results/tune.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import write_results
from transferline.tuning import StudyConfig, TrialRunner, best_trial, completed, run_study

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET = 20.0
HEAD_ONLY_SPACE = {"train.probe_l2": {"type": "float", "low": 1.0e-4, "high": 10.0, "log": True}}


def make_config(tmp: Path, name: str, **overrides) -> StudyConfig:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"]["strategy"] = "feature_extraction"
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp / "space.yaml").write_text(yaml.safe_dump(HEAD_ONLY_SPACE))
    values = {
        "space_file": str(tmp / "space.yaml"),
        "params_file": str(tmp / "params.yaml"),
        "prepared_dir": str(PROJECT_ROOT / "data" / "prepared"),
        "work_dir": str(tmp / "tuning"),
        "study_name": name,
        **overrides,
    }
    return StudyConfig(**values)


def timed_study(config: StudyConfig, runner: TrialRunner) -> dict:
    start = time.perf_counter()
    features_start = time.perf_counter()
    runner.prepare_features()
    features_seconds = time.perf_counter() - features_start
    study = run_study(config, runner)
    wall = time.perf_counter() - start
    trial_seconds = [t.user_attrs["seconds"] for t in completed(study)]
    trials_wall = wall - features_seconds
    return {
        "trials": len(trial_seconds),
        "features_seconds_up_front": features_seconds,
        "median_trial_seconds": statistics.median(trial_seconds),
        "trials_per_minute": 60 * len(trial_seconds) / trials_wall,
        "trials_per_minute_incl_features": 60 * len(trial_seconds) / wall,
        "best_val_accuracy": best_trial(study).value,
    }


def sampler_comparison(tmp: Path, trials: int, seeds: list[int]) -> dict:
    results: dict[str, list[float]] = {"random": [], "tpe": []}
    for sampler in results:
        for seed in seeds:
            config = make_config(tmp, f"{sampler}-{seed}", sampler=sampler, trials=trials, seed=seed)
            study = run_study(config, TrialRunner(config))  # shares the feature cache of tmp/tuning
            results[sampler].append(best_trial(study).value)
    return {
        sampler: {"best_val_accuracy_per_seed": values, "mean_best": statistics.mean(values)}
        for sampler, values in results.items()
    }


def run(quick: bool = False) -> dict:
    reuse_trials, recompute_trials = (3, 2) if quick else (10, 3)
    compare_trials, seeds = (4, [0]) if quick else (12, [0, 1, 2])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cached_config = make_config(tmp, "reuse", sampler="random", trials=reuse_trials)
        cached = timed_study(cached_config, TrialRunner(cached_config))
        recompute_config = make_config(
            tmp, "recompute", sampler="random", trials=recompute_trials, reuse_features=False
        )
        recompute_runner = TrialRunner(recompute_config)
        recompute_runner.prepare_features = lambda: []  # nothing up front: every trial computes its own
        recompute = timed_study(recompute_config, recompute_runner)
        comparison = sampler_comparison(tmp, compare_trials, seeds)
    speedup = cached["trials_per_minute"] / recompute["trials_per_minute"]
    results = {
        "quick": quick,
        "data": "data/prepared (default: Fashion-MNIST subset, 96 px): train 2800, val 600 images",
        "head_only_cached": cached,
        "head_only_recompute_features": recompute,
        "speedup_trials_per_minute": speedup,
        "speedup_target": SPEEDUP_TARGET,
        "speedup_target_met": speedup >= SPEEDUP_TARGET,
        "sampler_comparison": {"trials_each": compare_trials, "seeds": seeds, "space": HEAD_ONLY_SPACE, **comparison},
    }
    write_results("tune", results, markdown(results))
    return results


def markdown(r: dict) -> str:
    c, x, s = r["head_only_cached"], r["head_only_recompute_features"], r["sampler_comparison"]
    return "\n".join(
        [
            "# Hyperparameter search benchmark",
            "",
            f"Default data ({r['data']}), MobileNetV2 body, head-only (feature_extraction) trials, CPU."
            + (" Quick run." if r["quick"] else ""),
            "",
            "| head-only search | trials | median s/trial | trials/min | trials/min incl. one-off features |",
            "|---|---|---|---|---|",
            f"| features computed once per study | {c['trials']} | {c['median_trial_seconds']:.2f} | "
            f"{c['trials_per_minute']:.1f} | {c['trials_per_minute_incl_features']:.1f} |",
            f"| features recomputed every trial | {x['trials']} | {x['median_trial_seconds']:.2f} | "
            f"{x['trials_per_minute']:.1f} | {x['trials_per_minute_incl_features']:.1f} |",
            "",
            f"Speed-up: **{r['speedup_trials_per_minute']:.1f}x** trials per minute "
            f"(target {r['speedup_target']:.0f}x: "
            f"{'met' if r['speedup_target_met'] else 'NOT met'}); the one-off feature pass took "
            f"{c['features_seconds_up_front']:.1f} s.",
            "",
            f"## Random vs TPE, {s['trials_each']} trials each, seeds {s['seeds']}",
            "",
            "Space: `train.probe_l2` log-uniform in [1e-4, 10] (the only head-only hyperparameter), so this is a "
            "1-D search and both samplers are expected to land close together.",
            "",
            "| sampler | best val accuracy per seed | mean |",
            "|---|---|---|",
            *(
                f"| {name} | {', '.join(f'{v:.4f}' for v in s[name]['best_val_accuracy_per_seed'])} | "
                f"{s[name]['mean_best']:.4f} |"
                for name in ("random", "tpe")
            ),
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(markdown(run(parser.parse_args().quick)))
