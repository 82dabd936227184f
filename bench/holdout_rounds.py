"""Every held-out round in one table: each rule judged on data sets it never saw, beside always extracting
features and the hindsight bound, from the rounds' committed reports (bench/results/transfer_holdout_*.json).

A round judged the rule committed when it ran; some reports judge, on the same recorded runs, a rule fitted
later without that data set, or a rival (committed before the round, or chosen after reading it, which is no
verdict). The pooled row counts only the rules that were committed when their round ran, so it is what `auto`
scored on data nobody had looked at yet.

Usage: python -m bench.holdout_rounds (prints the markdown table the README quotes)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COMMITTED = "auto (the committed rule)"  # bench/transfer_holdout.py labels the rule it judges so
FEATURE_EXTRACTION = "always feature_extraction"
HINDSIGHT = "hindsight: cheapest within one SE"
COMMITTED_THEN = "committed when the round ran"
LATER = "fitted later without this data set"


@dataclass(frozen=True)
class Judgement:
    """One report: the round's data set, the rule it judged in words, and that rule's role there."""

    report: str
    data_set: str
    rule: str
    role: str = COMMITTED_THEN

    @property
    def committed_then(self) -> bool:
        return self.role == COMMITTED_THEN


JUDGEMENTS = (
    Judgement("transfer_holdout_cifar10", "CIFAR-10", "tree"),
    Judgement("transfer_holdout_emoji", "emoji", "tree"),
    Judgement("transfer_holdout_quickdraw", "Quick, Draw!", "tree"),
    Judgement("transfer_holdout_quickdraw_loss_beyond_one_se", "Quick, Draw!", "tree, loss beyond one SE", LATER),
    Judgement("transfer_holdout_quickdraw_probe_layers", "Quick, Draw!", "tree, multi-layer head", LATER),
    Judgement("transfer_holdout_quickdraw_aim_chosen", "Quick, Draw!", "tree, CPU aim chosen", LATER),
    Judgement("transfer_holdout_mnist", "MNIST", "tree, CPU aim chosen"),
    Judgement(
        "transfer_holdout_mnist_aim_fixed", "MNIST", "tree, CPU aim fixed at 15%", "the rule before it, judged later"
    ),
    Judgement("transfer_holdout_glyphs", "letter glyphs", "tree"),
    Judgement(
        "transfer_holdout_glyphs_nearest_cells",
        "letter glyphs",
        "nearest cells",
        "a rival fitted on the same cells, judged later",
    ),
    Judgement("transfer_holdout_clipart", "clip art", "nearest cells, 2 signals"),
    Judgement(
        "transfer_holdout_clipart_six_signals",
        "clip art",
        "nearest cells, 6 signals",
        "a rival committed before the round",
    ),
    Judgement("transfer_holdout_units", "Wesnoth units", "nearest cells, 2 signals"),
    Judgement(
        "transfer_holdout_units_grid_only",
        "Wesnoth units",
        "nearest cells, without the 5-epoch schedule",
        "a rival chosen after reading the round",
    ),
    Judgement("transfer_holdout_icons", "desktop icons", "nearest cells, 2 signals"),
    Judgement(
        "transfer_holdout_icons_grid_only",
        "desktop icons",
        "nearest cells, without the 5-epoch schedule",
        "a rival committed before the round",
    ),
)


def load_report(name: str, results: Path = RESULTS) -> dict:
    return json.loads((results / f"{name}.json").read_text())


def cells_within(verdict: dict) -> int:
    """How many cells a verdict's share stands for (shares are stored as fractions of its cells)."""
    return round(verdict["within_one_se"] * verdict["cells"])


def table_row(judgement: Judgement, report: dict) -> str:
    verdicts = report["verdicts"]
    auto, extraction = verdicts[COMMITTED], verdicts[FEATURE_EXTRACTION]
    cpu = report["measured_on"].split(",")[0].replace("(R)", "").replace(" Processor", "")
    return (
        f"| {judgement.data_set} | {judgement.rule}, fitted on {report['rule_fitted_on']} cells | {judgement.role} "
        f"| {cells_within(auto)} of {auto['cells']} ({auto['within_one_se']:.0%}) at {auto['cpu_share_of_grid']:.1%} "
        f"| {extraction['within_one_se']:.0%} at {extraction['cpu_share_of_grid']:.1%} "
        f"| {verdicts[HINDSIGHT]['cpu_share_of_grid']:.1%} | {cpu} |"
    )


def pooled_row(reports: dict[str, dict]) -> str:
    """The rules committed when their rounds ran, their cells pooled (CPU shares are per round and per kind
    of CPU, so they are not pooled)."""
    verdicts = [reports[j.report]["verdicts"][COMMITTED] for j in JUDGEMENTS if j.committed_then]
    within, cells = sum(cells_within(v) for v in verdicts), sum(v["cells"] for v in verdicts)
    share = f"{within} of {cells} ({within / cells:.0%})"
    return f"| all {len(verdicts)} rounds | the rule committed then | {COMMITTED_THEN} | {share} | | | |"


def rounds_table(results: Path = RESULTS) -> str:
    reports = {j.report: load_report(j.report, results) for j in JUDGEMENTS}
    header = (
        "| held-out data set | rule judged | its role | auto: cells within one SE, at CPU share "
        "| always feature_extraction | hindsight: cheapest within one SE, CPU | CPU |\n"
        "|---|---|---|---|---|---|---|"
    )
    rows = [table_row(j, reports[j.report]) for j in JUDGEMENTS]
    return "\n".join([header, *rows, pooled_row(reports)])


if __name__ == "__main__":
    print(rounds_table())
