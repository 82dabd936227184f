"""What a search shows in Prefect's UI and on the command line: the trials table, the optimisation history as
text (no plotting dependency), and the best trial as params.yaml overrides and a `dvc exp run` command."""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import optuna

from transferline.search.search_space import TUPLE_KEYS
from transferline.search.tuning import completed

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(BARS[round((v - low) / span * (len(BARS) - 1))] for v in values)


def history_markdown(study: optuna.Study, best: optuna.trial.FrozenTrial | None) -> str:
    """Optimisation history: each completed trial's val accuracy and the best so far, as sparklines and a table."""
    trials = sorted(completed(study), key=lambda t: t.number)
    values = [t.value for t in trials]
    best_so_far = [max(values[: i + 1]) for i in range(len(values))]
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    lines = [
        f"# Hyperparameter search `{study.study_name}`",
        "",
        f"{len(states)} trials: {states.count('complete')} complete, {states.count('pruned')} pruned, "
        f"{states.count('fail')} failed, {states.count('running') + states.count('waiting')} running or queued. "
        "Metric: validation accuracy (the test split is never used for selection).",
        "",
        "## Optimisation history",
        "",
        "```",
        f"val accuracy  {sparkline(values)}",
        f"best so far   {sparkline(best_so_far)}",
        "```",
        "",
        "| trial | val accuracy | best so far |",
        "|---|---|---|",
        *(f"| {t.number} | {v:.4f} | {b:.4f} |" for t, v, b in zip(trials, values, best_so_far, strict=True)),
        "",
    ]
    if best is not None:
        lines += [
            f"## Best: trial {best.number}, val accuracy {best.value:.4f}",
            "",
            "Replay it through the pipeline (a DVC experiment):",
            "",
            "```",
            dvc_exp_command(best),
            "```",
            "",
            "or write it into params.yaml with `python -m flows.tune ... --apply-best`.",
            "",
        ]
    return "\n".join(lines)


def trial_rows(study: optuna.Study) -> list[dict]:
    """One row per trial, for the Prefect table artifact."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = trial.user_attrs.get("seconds")
        if seconds is None and trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        last_step = max(trial.intermediate_values, default=None)
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "val_accuracy": None if trial.value is None else round(trial.value, 4),
                "epochs": trial.user_attrs.get("epochs_run", last_step),
                "seconds": None if seconds is None else round(seconds, 2),
                "params": json.dumps(trial.params, sort_keys=True),
                "worker": trial.user_attrs.get("worker", ""),
                "error": trial.user_attrs.get("error") or "",
            }
        )
    return rows


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def replay_overrides(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The params.yaml overrides that reproduce a trial (tuple-valued keys as their 1-element lists)."""
    return {k: ([v] if k.rsplit(".", 1)[-1] in TUPLE_KEYS else v) for k, v in sorted(trial.params.items())}


def dvc_exp_command(trial: optuna.trial.FrozenTrial) -> str:
    args = []
    for key, value in replay_overrides(trial).items():
        text = f"[{', '.join(format_value(v) for v in value)}]" if isinstance(value, list) else format_value(value)
        args.append(f"-S {shlex.quote(f'{key}={text}')}")
    return " ".join(["dvc exp run", *args])
