"""Hyperparameter-search benchmarks on the default data (Fashion-MNIST subset, 96 px), head-only trials.

1. Trials per minute of a head-only search on features computed once per study (kept in memory, prepared
   for the head), vs the same search recomputing the backbone features in every trial. Both studies run
   the same trials (same sampler, seed and slots, hence the same params), interleaved so that both see
   the same machine load, and every trial is timed end to end (sampling, storage, features, head fit).
   The headline compares whole studies: the cached study's one-off feature pass counts against its
   trials, as a user waits for it; the per-trial ratio (feature pass left out) is reported beside it.
2. Random vs TPE at equal trial counts over the multi-dimensional head-only space (L2 strength,
   standardisation, label smoothing), over several seeds: best and mean val accuracy per sampler.

Run from the project root with data/prepared present (`dvc repro prepare`). Writes bench/results/tune.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import write_results
from transferline.search.tuning import StudyConfig, TrialRunner, completed, open_study, run_study, run_trial

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# A study of n trials that pays the feature pass once instead of n times is less than n times faster
# whatever its head trials cost, so the whole-study figure is reported against that ceiling, without a
# target of its own; the target is on what caching controls, the cost of one trial.
PER_TRIAL_TARGET = 20.0
HEAD_ONLY_SPACE = {
    "train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True},
    "train.probe_standardize": {"type": "categorical", "choices": [True, False]},
    "train.probe_label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
}
CURVE_POINTS = (5, 10, 20)  # best-so-far accuracy reported after this many trials


def make_config(tmp: Path, name: str, **overrides) -> StudyConfig:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"]["strategy"] = "feature_extraction"
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp / "space.yaml").write_text(yaml.safe_dump(HEAD_ONLY_SPACE, sort_keys=False))
    values = {
        "space_file": str(tmp / "space.yaml"),
        "params_file": str(tmp / "params.yaml"),
        "prepared_dir": str(PROJECT_ROOT / "data" / "prepared"),
        "work_dir": str(tmp / "tuning"),
        "study_name": name,
        **overrides,
    }
    return StudyConfig(**values)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def timed_trial(config: StudyConfig, runner: TrialRunner, slot: int) -> dict:
    """One trial through the real path (open the stored study, sample, fit, record), timed end to end."""
    start = time.perf_counter()
    outcome = run_trial(config, slot, runner)
    wall = time.perf_counter() - start
    if outcome["state"] != "complete":
        raise RuntimeError(f"trial {outcome['number']} of {config.study_name}: {outcome['state']} ({outcome['error']})")
    trial = open_study(config, runner.space, slot).trials[outcome["number"]]
    fit = trial.user_attrs["head_fit_seconds"]
    return {
        "wall_seconds": wall,
        "objective_seconds": trial.user_attrs["seconds"],
        "head_fit_seconds": fit,
        "features_seconds": trial.user_attrs["seconds"] - fit,  # backbone pass + head preparation, if any
        "params": trial.params,
        "value": trial.value,
    }


def timed_feature_pass(runner: TrialRunner) -> float:
    """The one-off pass a cached study pays: backbone features of train + val, written to the runner's
    cache, and the head's preparation of them for every standardisation the space allows."""
    start = time.perf_counter()
    runner.prepare_features()
    return time.perf_counter() - start


def summary(trials: list[dict]) -> dict:
    walls = [t["wall_seconds"] for t in trials]
    return {
        "trials": len(trials),
        "trials_per_minute": 60 * len(walls) / sum(walls),
        "median_trial_seconds": statistics.median(walls),
        "median_head_fit_seconds": statistics.median(t["head_fit_seconds"] for t in trials),
        "median_features_seconds": statistics.median(t["features_seconds"] for t in trials),
        "median_overhead_seconds": statistics.median(t["wall_seconds"] - t["objective_seconds"] for t in trials),
    }


def speed(tmp: Path, trials: int, matched: int) -> dict:
    """Cached vs recomputed features, the first `matched` trials of both studies run interleaved."""
    cached_config = make_config(tmp, "cached", sampler="random", trials=trials)
    runner = TrialRunner(cached_config)
    pass_seconds = [timed_feature_pass(runner)]
    recompute_config = make_config(tmp, "recompute", sampler="random", trials=matched, reuse_features=False)
    recompute_runner = TrialRunner(recompute_config, data=runner.data)  # same pixels in memory; features per trial
    load_before = load_average()
    cached, recompute = [], []
    for slot in range(trials):
        if slot < matched:
            recompute.append(timed_trial(recompute_config, recompute_runner, slot))
            if slot > 0:  # the one-off pass again, between the recomputing trials: both see the same machine
                fresh = make_config(tmp, f"pass-{slot}", work_dir=str(tmp / f"pass-{slot}"))
                pass_seconds.append(timed_feature_pass(TrialRunner(fresh, data=runner.data)))
        cached.append(timed_trial(cached_config, runner, slot))
    same_params = all(c["params"] == r["params"] for c, r in zip(cached, recompute, strict=False))
    matched_cached, recomputed = summary(cached[:matched]), summary(recompute)
    features_seconds = statistics.median(pass_seconds)
    study = study_rates(features_seconds, cached, recomputed)
    return {
        "runner": runner,
        "features_seconds_up_front": features_seconds,
        "features_seconds_up_front_runs": pass_seconds,
        "load_average_1_5_15": {"before": load_before, "after": load_average()},
        "same_params": same_params,
        "head_only_cached": summary(cached),
        "head_only_cached_matched": matched_cached,
        "head_only_recompute_features": recomputed,
        "study": study,
        "speedup": study["speedup"],
        "speedup_per_trial": matched_cached["trials_per_minute"] / recomputed["trials_per_minute"],
        "speedup_all_cached_trials": summary(cached)["trials_per_minute"] / recomputed["trials_per_minute"],
    }


def study_rates(features_seconds: float, cached: list[dict], recomputed: dict) -> dict:
    """Trials/min of a whole study of len(cached) trials, each way: the cached study pays the one-off feature
    pass plus its trials; the recomputing study pays its median trial once per trial (no one-off cost)."""
    trials = len(cached)
    cached_seconds = features_seconds + sum(t["wall_seconds"] for t in cached)
    recompute_seconds = trials * recomputed["median_trial_seconds"]
    return {
        "trials": trials,
        "cached_seconds_feature_pass_included": cached_seconds,
        "cached_trials_per_minute": 60 * trials / cached_seconds,
        "recompute_seconds_estimated": recompute_seconds,
        "recompute_trials_per_minute": 60 * trials / recompute_seconds,
        "speedup": recompute_seconds / cached_seconds,
    }


def best_so_far(values: list[float]) -> list[float]:
    return [max(values[: i + 1]) for i in range(len(values))]


def sampler_comparison(tmp: Path, runner: TrialRunner, trials: int, seeds: list[int]) -> dict:
    """Each sampler, each seed: a fresh study of `trials` head-only trials on the shared in-memory features."""
    results: dict[str, dict] = {}
    for sampler in ("random", "tpe"):
        runs = []
        for seed in seeds:
            config = make_config(tmp, f"{sampler}-{seed}", sampler=sampler, trials=trials, seed=seed)
            start = time.perf_counter()
            study = run_study(config, runner)
            seconds = time.perf_counter() - start
            runs.append(([t.value for t in sorted(completed(study), key=lambda t: t.number)], seconds))
        curves = [best_so_far(values) for values, _ in runs]
        results[sampler] = {
            "best_val_accuracy_per_seed": [curve[-1] for curve in curves],
            "mean_best": statistics.mean(curve[-1] for curve in curves),
            "mean_val_accuracy_per_seed": [statistics.mean(values) for values, _ in runs],
            "mean_val_accuracy": statistics.mean(v for values, _ in runs for v in values),
            "mean_best_after": {
                str(n): statistics.mean(curve[n - 1] for curve in curves) for n in CURVE_POINTS if n <= trials
            },
            "seconds_per_study": [seconds for _, seconds in runs],
        }
    return results


def run(quick: bool = False) -> dict:
    trials, matched = (6, 2) if quick else (20, 3)
    compare_trials, seeds = (10, [0, 1]) if quick else (20, [0, 1, 2])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        timing = speed(tmp, trials, matched)
        runner = timing.pop("runner")
        load_before = load_average()
        comparison = sampler_comparison(tmp, runner, compare_trials, seeds)
        load_after = load_average()
    results = {
        "quick": quick,
        "data": "data/prepared (default: Fashion-MNIST subset, 96 px): train 2800, val 600 images",
        **timing,
        "speedup_ceiling": trials,
        "speedup_share_of_ceiling": timing["speedup"] / trials,
        "speedup_per_trial_target": PER_TRIAL_TARGET,
        "speedup_per_trial_target_met": timing["speedup_per_trial"] >= PER_TRIAL_TARGET,
        "sampler_comparison": {
            "trials_each": compare_trials,
            "seeds": seeds,
            "space": HEAD_ONLY_SPACE,
            "load_average_1_5_15": {"before": load_before, "after": load_after},
            **comparison,
        },
        "seconds_total": time.perf_counter() - start,
    }
    write_results("tune", results, markdown(results))
    return results


def markdown(r: dict) -> str:
    c, m, x, s = (
        r["head_only_cached"],
        r["head_only_cached_matched"],
        r["head_only_recompute_features"],
        r["sampler_comparison"],
    )

    def row(name: str, t: dict) -> str:
        return (
            f"| {name} | {t['trials']} | {t['median_trial_seconds']:.3f} | {t['median_features_seconds']:.3f} | "
            f"{t['median_head_fit_seconds']:.3f} | {t['median_overhead_seconds']:.3f} | {t['trials_per_minute']:.1f} |"
        )

    load, st = r["load_average_1_5_15"], r["study"]
    return "\n".join(
        [
            "# Hyperparameter search benchmark",
            "",
            f"Default data ({r['data']}), MobileNetV2 body, head-only (feature_extraction) trials, CPU."
            + (" Quick run." if r["quick"] else "")
            + f" Load average (1/5/15 min) {load['before']} before the timed trials, {load['after']} after.",
            "",
            "| head-only search | trials | median s/trial | features s | head fit s | Optuna s | trials/min |",
            "|---|---|---|---|---|---|---|",
            row("features cached, same trials as below", m),
            row("features recomputed every trial", x),
            row("features cached, all trials", c),
            "",
            f"A {st['trials']}-trial study, one-off feature pass included ({r['features_seconds_up_front']:.1f} s, "
            f"median of {len(r['features_seconds_up_front_runs'])} passes interleaved with the recomputing trials "
            f"({', '.join(f'{v:.1f}' for v in r['features_seconds_up_front_runs'])} s); "
            f"backbone pass over train + val and head preparation): **{st['cached_trials_per_minute']:.1f} "
            f"trials/min** ({st['cached_seconds_feature_pass_included']:.1f} s) vs "
            f"{st['recompute_trials_per_minute']:.1f} trials/min recomputing features every trial "
            f"({st['recompute_seconds_estimated']:.1f} s: {st['trials']} x its median trial): "
            f"**{r['speedup']:.1f}x**. Paying the feature pass once instead of {st['trials']} times, the study "
            f"is less than {st['trials']}x faster however cheap its trials are: this is "
            f"{r['speedup_share_of_ceiling']:.0%} of that ceiling (the rest: the trials' head fits, and the "
            "one-off pass preparing the head for both standardisations and writing the cache).",
            "",
            f"Per trial, feature pass left out: {r['speedup_per_trial']:.1f}x on the same trials "
            f"(target {PER_TRIAL_TARGET:g}x: {'met' if r['speedup_per_trial'] >= PER_TRIAL_TARGET else 'NOT met'}; "
            f"{'same' if r['same_params'] else 'DIFFERENT'} params, run interleaved); "
            f"{r['speedup_all_cached_trials']:.1f}x counting every cached trial. "
            "Features s: the backbone pass over train + val and the head's preparation of its output, "
            "per trial; Optuna s: sampling and storage around the objective.",
            "",
            f"## Random vs TPE, {s['trials_each']} trials each, seeds {s['seeds']}",
            "",
            "Space: `train.probe_l2` log-uniform in [1e-3, 1], `train.probe_standardize` true/false, "
            "`train.probe_label_smoothing` uniform in [0, 0.3]. Load average "
            f"{s['load_average_1_5_15']['before']} before, {s['load_average_1_5_15']['after']} after.",
            "",
            "| sampler | best val accuracy per seed | mean best | "
            + " | ".join(f"mean best after {n}" for n in s["random"]["mean_best_after"])
            + " | mean val accuracy of all trials |",
            "|---|---|---|" + "---|" * len(s["random"]["mean_best_after"]) + "---|",
            *(
                f"| {name} | {', '.join(f'{v:.4f}' for v in s[name]['best_val_accuracy_per_seed'])} | "
                f"{s[name]['mean_best']:.4f} | "
                + " | ".join(f"{v:.4f}" for v in s[name]["mean_best_after"].values())
                + f" | {s[name]['mean_val_accuracy']:.4f} |"
                for name in ("random", "tpe")
            ),
            "",
            f"Whole benchmark: {r['seconds_total']:.0f} s.",
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(markdown(run(parser.parse_args().quick)))
