"""Two of `strategy: auto`'s fitting settings moved, each judged as the study judges auto: leave one data
set out.

- The CPU penalty's aim. The committed fit chooses it (12% to 17% of the training data sets' grid) by leaving
  training data sets out, since a rule spends less or more on a data set it has not seen than the aim it
  was fitted to. Aimed at the 15% target itself, the row shows what that choice buys.
- The validation check's margins. The fit chooses a margin from 0 to 2 SE: a fine-tune is kept only where
  it beats the probe on validation. Margins of -1 and -0.5 SE among the choices let a check keep a
  fine-tune that trails the probe by less, for the cells where fine-tuning wins but its few validation
  images said otherwise.

Every other setting is the tree method's (bench/transfer_analysis.py `fit_tree_rule`), so each row
differs from the study's auto in that one setting. It trains nothing: it reads
bench/results/transfer_study.json. A few minutes a row on 2 cores.

Writes bench/results/transfer_auto_knobs.{md,json}. Usage: python -m bench.auto_knobs
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import results_dir, write_results
from bench.transfer_analysis import (
    CPU_AIMS,
    FIT_CHOICES,
    TARGET_CPU,
    TARGET_SHARE,
    VALIDATION_MARGINS,
    at_rules_margin,
    auto_signal_seconds,
    fit_tree_rule,
    held_out_verdict,
    leave_one_dataset_out,
    usable_cores,
)
from bench.transfer_design import RECIPES, TREE_RULE
from bench.transfer_report import verdict_columns
from bench.transfer_study import study_cells
from transferline.model.advisor import Cell

NEGATIVE_MARGINS = (-1.0, -0.5)
# (label, the CPU aims the fit chooses from (None: aimed at the target), the margins it chooses from)
KNOBS: tuple[tuple[str, tuple[float, ...] | None, tuple[float, ...]], ...] = (
    (f"the fit aimed at {TARGET_CPU:.0%} of its training grid, not chosen", None, VALIDATION_MARGINS),
    ("margins from -1 to 2 SE", CPU_AIMS, (*NEGATIVE_MARGINS, *VALIDATION_MARGINS)),
)


def knob_verdict(
    cells: list[Cell],
    errors: dict[str, float],
    signals: dict[str, dict[str, Any]],
    aims: tuple[float, ...] | None,
    margins: tuple[float, ...],
    processes: int = 1,
) -> dict[str, Any]:
    """The tree method with CPU `aims` and `margins`, judged leaving one data set out: its verdict,
    the cells it misses, and what each held-out data set's fold chose. `cells` must record their checked
    outcomes at every one of `margins` (`study_cells(..., margins=...)`)."""
    missing = sorted({m for m in margins for c in cells if m not in c.checked_at})
    if missing:
        raise ValueError(f"the cells hold no checked outcomes at margins {missing}")
    picks, rules = leave_one_dataset_out(
        cells,
        RECIPES,
        lambda train: fit_tree_rule(train, RECIPES, errors, margins, signals=signals, aims=aims),
        processes,
    )
    judged = at_rules_margin([c for c in cells if c.name in picks], rules)
    return {
        **held_out_verdict(judged, picks, errors, auto_signal_seconds(signals, judged, rules)),
        "folds": {dataset: {k: rule["fit"][k] for k in FIT_CHOICES} for dataset, rule in sorted(rules.items())},
    }


def markdown(study: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    committed = study["verdicts"][TREE_RULE]
    base_misses = {m["cell"] for m in study["tree_misses"]}
    lines = [
        "# auto's fitting settings moved",
        "",
        f"The transfer study's {committed['cells']} cells (bench/results/transfer_study.json, "
        f"{study['measured_on']}). Each row is the tree method (bench/transfer_analysis.py "
        "`fit_tree_rule`) with one setting changed, judged leaving one data set out as the study judges auto; "
        "the first row is the study's own verdict.",
        "",
        f"Targets: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's CPU.",
        "",
        "| setting | within one SE | cells | mean regret | CPU share | meets both | cells gained | cells lost |",
        "|---|---|---|---|---|---|---|---|",
        f"| the tree method: the fit's aim chosen from {CPU_AIMS[0]:.0%} to {CPU_AIMS[-1]:.0%}, margins 0 to 2 SE "
        f"| {verdict_columns(committed)} | | |",
    ]
    for row in rows:
        misses = set(row["misses"])
        gained, lost = sorted(base_misses - misses), sorted(misses - base_misses)
        lines.append(
            f"| {row['setting']} | {verdict_columns(row)} | "
            f"{', '.join(gained) or 'none'} | {', '.join(lost) or 'none'} |"
        )
    lines += [
        "",
        "What each held-out data set's fold chose (margin in SE, depth, smallest leaf, CPU aim, CPU weight):",
        "",
    ]
    for row in rows:
        chosen = "; ".join(
            f"{d} {f['margin_se']:g}/{f['depth']}/{f['min_leaf']}/{f['cpu_target']:.0%}/{f['cpu_weight']:.2f}"
            for d, f in row["folds"].items()
        )
        lines.append(f"- {row['setting']}: {chosen}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    study = json.loads((results_dir() / "transfer_study.json").read_text())
    margins = tuple(sorted({m for _, _, knob in KNOBS for m in knob}))
    cells, errors = study_cells(study, margins=margins)
    rows = []
    for setting, aims, knob_margins in KNOBS:
        verdict = knob_verdict(cells, errors, study["signals"], aims, knob_margins, usable_cores())
        rows.append({"setting": setting, "cpu_aims": aims and list(aims), "margins": list(knob_margins), **verdict})
    write_results("transfer_auto_knobs", {"rows": rows}, markdown(study, rows))


if __name__ == "__main__":
    main()
