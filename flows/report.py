"""The run report a user sees in Prefect's UI: metrics, the gate's checks and decision, the outcome."""

from __future__ import annotations

from transferline.evaluation.model_card import advice_lines, champion_lines, checks_table, fmt


def run_report_markdown(
    outcomes: list[dict],
    metrics: dict,
    decision: dict,
    outcome: str,
    reason: str | None = None,
    advice: dict | None = None,
) -> str:
    """`reason`: why the run was started (a watch's trigger); `advice`: models/advice.json when `auto` chose
    the recipe or backbone, shown so the run says why."""
    lines = [
        f"# transferline run: {outcome}",
        "",
        *([f"Started because: {reason}", ""] if reason else []),
        "## Stages",
        "",
        "| stage | ran | seconds |",
        "|---|---|---|",
        *(f"| {o['stage']} | {'ran' if o['ran'] else 'skipped (unchanged)'} | {o['seconds']:.1f} |" for o in outcomes),
        "",
        "## Test metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(
            f"| {name} | {fmt(metrics.get(name))} |"
            for name in ("accuracy", "macro_f1", "min_class_recall", "top_k_accuracy", "roc_auc_ovr", "log_loss", "ece")
        ),
        "",
        f"## Gate: {'PASSED' if decision['passed'] else 'REJECTED'}",
        "",
        decision["reason"],
        "",
        *checks_table(decision),
        "",
        *champion_lines(decision),
        "",
        *advice_lines(advice),
    ]
    return "\n".join(lines)


def per_class_rows(metrics: dict) -> list[dict]:
    return [
        {"class": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
        for name, m in metrics.get("per_class", {}).items()
    ]
