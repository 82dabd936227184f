"""What a search shows in Prefect's UI: the optimisation history as text (no plotting dependency) and the best trial."""

from __future__ import annotations

import optuna

from transferline.search.tuning import completed, dvc_exp_command

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
