"""auto's rule on another set of signals, fitted on every study cell exactly as the committed rule is (nearest
cells, its k, CPU weight and margin chosen by leaving data sets out, the backbone comparison chosen the same
way): a rival a held-out round judges beside the committed rule on the same runs. Written, and committed,
before that round's data is seen, so the comparison cannot be tuned to it.

With `--signals size_and_probe` it rebuilds the committed rule file from the cells that file was fitted on
(tests/train/test_auto_strategy.py checks that), so the two differ only in the signals they read. With
`--recipes grid` the rival chooses among the grid's 10-epoch recipes only, without the 5-epoch half-frozen
schedule the committed rule may also propose.

It trains nothing: it reads bench/results/transfer_study.json (a few seconds on 2 cores).
Usage: python -m bench.variant_rule --signals all --out bench/results/advisor_rule_six_signals.json
       python -m bench.variant_rule --signals size_and_probe --recipes grid --out FILE
then: python -m bench.transfer_holdout --report-only --datasets NAME --rule that file --suffix six_signals
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import results_dir
from bench.nearest_fit import SIZE_AND_PROBE
from bench.transfer_design import GRID, RECIPES
from bench.transfer_study import IMAGE_SIZE, rule_cost, rule_document, rule_fit, study_cells, study_signals
from transferline import atomic
from transferline.model.advisor import SIGNALS

SIGNAL_SETS: dict[str, tuple[str, ...]] = {"all": SIGNALS, "size_and_probe": SIZE_AND_PROBE}
RECIPE_SETS: dict[str, dict[str, dict[str, Any]]] = {"all": RECIPES, "grid": GRID}


def variant_rule(
    study: dict[str, Any],
    signals: tuple[str, ...],
    image_size: int = IMAGE_SIZE,
    recipes: dict[str, dict[str, Any]] = RECIPES,
) -> dict[str, Any]:
    """The rule file the study would write were auto's nearest cells to read `signals` and choose among
    `recipes`."""
    state = {"runs": study["runs"], "signals": study_signals(study)}
    cells, errors = study_cells(state)
    if not cells:
        raise ValueError("the study holds no complete cell to fit a rule on")
    rule = rule_fit(errors, state["signals"], signals, recipes)(cells)
    rule["cost"] = rule_cost(state["runs"])
    return rule_document(rule, [c.name for c in cells], state["runs"], image_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", choices=sorted(SIGNAL_SETS), required=True)
    parser.add_argument(
        "--recipes", choices=sorted(RECIPE_SETS), default="all", help="grid: without the 5-epoch schedule"
    )
    parser.add_argument("--out", type=Path, required=True, help="the rule file to write")
    parser.add_argument("--study", type=Path, default=None, help="default: bench/results/transfer_study.json")
    args = parser.parse_args(argv)
    study = json.loads((args.study or results_dir() / "transfer_study.json").read_text())
    rule = variant_rule(study, SIGNAL_SETS[args.signals], recipes=RECIPE_SETS[args.recipes])
    atomic.write_json(args.out, rule)
    print(
        f"rule on {', '.join(SIGNAL_SETS[args.signals])}, choosing among {args.recipes} recipes, written to {args.out}"
    )


if __name__ == "__main__":
    main()
