"""The transfer study's report: learning curves, the policy map and the markdown, all from the analysis
that bench/transfer_study.py computes (pure formatting; nothing here trains or judges)."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from bench.backbone_fit import AUTO_BACKBONE, BACKBONE_HINDSIGHT, COMPARISON_POLICIES
from bench.transfer_analysis import (
    CPU_AIMS,
    TARGET_CPU,
    TARGET_SHARE,
    cell_id,
    cells_ran_on,
    grid_cpu,
    meets_targets,
)
from bench.transfer_design import (
    AUTO,
    AUTO_BY_SEEDS,
    BEST_EPOCH_CHECK,
    DATASETS,
    EXPERIMENT_NOTES,
    EXPERIMENTS,
    GRID,
    HELD_OUT,
    HINDSIGHT,
    HINDSIGHT_AT_TARGET,
    NO_BUDGET,
    NO_MARGIN,
    PERFECT_CHECK,
    PLAIN_REGRET,
    RECIPES,
    SEEDS_LARGE,
    SEEDS_SMALL,
    SMALL,
    TREE_RULE,
    UNCHECKED,
)
from transferline.model import nearest_cells
from transferline.model.nearest_cells import NEAREST_CELLS


def verdict_columns(verdict: dict[str, Any]) -> str:
    """A policy's verdict as table columns: within one SE, cells, mean regret, CPU share, meets both."""
    cells = round(verdict["within_one_se"] * verdict["cells"])
    return (
        f"{verdict['within_one_se']:.0%} | {cells} | {verdict['mean_regret']:.4f} | "
        f"{verdict['cpu_share_of_grid']:.1%} | {'yes' if meets_targets(verdict) else 'no'}"
    )


def curves(state: dict[str, Any], out_dir: Path, report: str = "transfer_study") -> list[str]:
    """One PNG per data set, `<report>_<data set>.png`: test accuracy against images per class, a line per
    recipe, a panel per backbone. Each report names its own files, so a held-out round's curves (seed 0 of
    its data sets) never overwrite the study's curves of the same data set, which may hold more seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in sorted({r["dataset"] for r in state["runs"]}):
        runs = [r for r in state["runs"] if r["dataset"] == dataset and r["size"] is not None]
        backbones = sorted({r["backbone"] for r in runs})
        figure, axes = plt.subplots(1, len(backbones), figsize=(5.5 * len(backbones), 4), squeeze=False)
        for axis, backbone in zip(axes[0], backbones, strict=True):
            for recipe in [*RECIPES, "fastai"]:
                points = {}
                for r in runs:
                    if r["backbone"] == backbone and r["recipe"] == recipe:
                        points.setdefault(r["size"], []).append(r["test_accuracy"])
                if points:
                    sizes = sorted(points)
                    axis.plot(sizes, [statistics.fmean(points[s]) for s in sizes], marker="o", label=recipe)
            axis.set_xscale("log")
            axis.set_xlabel("images per class")
            axis.set_ylabel("test accuracy")
            axis.set_title(f"{dataset}: {backbone}")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"{report}_{dataset}.png"
        tmp = path.with_suffix(".tmp.png")
        figure.savefig(tmp, dpi=110)
        plt.close(figure)
        tmp.replace(path)
        written.append(path.name)
    return written


def policy_map(verdicts: dict[str, dict[str, Any]], out_dir: Path) -> str:
    """One PNG: each policy's share of cells within one SE of the best against its CPU share of the grid,
    with auto's targets drawn in: the picture of what each policy buys with its CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    axis.fill_between([0, 100 * TARGET_CPU], TARGET_SHARE, 1.0, color="tab:green", alpha=0.12, label="targets")
    points = sorted(
        (100 * v["cpu_share_of_grid"], v["within_one_se"], label)
        for label, v in verdicts.items()
        # no per-backbone rows, nor the perfect check's bound (it shares auto's CPU)
        if v.get("cpu_share_of_grid") is not None and not label.startswith("auto, ") and label != PERFECT_CHECK
    )
    axis.set_xlim(0, max([35.0, *(x + 3 for x, _, _ in points)]))
    axis.set_ylim(0, 1.05)
    renderer = figure.canvas.get_renderer()
    placed = []
    for x, y, label in points:
        is_auto = label == AUTO
        axis.scatter([x], [y], s=60 if is_auto else 30, color="tab:red" if is_auto else "tab:blue", zorder=3)
        for offset in (4, -11, 13, -20):  # above the point first; below, or further out, where a label is
            text = axis.annotate(label, (x, y), fontsize=7, xytext=(4, offset), textcoords="offset points")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or offset == -20:
                placed.append(box)
                break
            text.remove()
    axis.set_xlabel("CPU time, % of the whole grid")
    axis.set_ylabel("cells within one SE of the best")
    axis.set_title("Policies on the transfer study (leave one data set out)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = out_dir / "transfer_study_policies.png"
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)
    return path.name


def expected_range_words(coverage: dict[str, Any], leaf: str = "its held-out fold's proposal") -> list[str]:
    """The report's sentence on how the advice's expected accuracy range fares on held-out data sets."""
    if not coverage.get("cells"):
        return []
    return [
        "",
        f"The expected accuracy range the advice states before training ({leaf}: the probe's "
        "accuracy plus the lowest to highest gain over it among the fitting cells behind it) holds the test "
        f"accuracy auto then got in {coverage['inside']} of {coverage['cells']} cells ({coverage['below']} "
        f"below it, {coverage['above']} above), at a median width of {coverage['median_width']:.2f} of accuracy "
        f"({coverage['narrowest']:.2f} to {coverage['widest']:.2f}). Those cells choose the recipe; as a "
        "forecast of its accuracy on a new data set, the range is only that precise.",
    ]


def replicate_words(repeat: dict[str, Any]) -> list[str]:
    """The report's paragraph and table on what knowing a whole replicate of the grid buys, beside auto."""
    if not repeat.get("trials"):
        return []
    lines = [
        "",
        f"How repeatable the best recipe is: in the {repeat['cells']} cells with three seeds, the recipe best "
        f"on one seed (the cheaper on a tie) is within one SE of the best on the other seeds' mean in "
        f"{repeat['within_one_se']:.0%} of {repeat['trials']} trials. The noise in the target itself sits near "
        "the 80% asked for.",
    ]
    frontier = repeat.get("frontier") or []
    if not frontier:
        return lines
    lines += [
        "",
        "What a policy that knew a whole replicate of the grid could buy: each seed in turn is the replicate, "
        "its results pick the cheapest recipe within a tolerance of its own best (in standard errors of its "
        "test split), and the pick is judged on the other seeds like every policy here (its CPU too, as a "
        "share of their grid). A replicate is everything training the cell could tell a policy short of "
        "running the grid again.",
        "",
        "| policy, on the same trials | within one SE | CPU share of the grid |",
        "|---|---|---|",
    ]
    for row in frontier:
        label = (
            "the replicate's best recipe"
            if row["tolerance_se"] == 0
            else f"the replicate's cheapest within {row['tolerance_se']:g} SE of its best"
        )
        lines.append(f"| {label} | {row['within_one_se']:.1%} | {row['cpu_share_of_grid']:.1%} |")
    auto = repeat.get("auto")
    if auto:
        lines.append(
            f"| auto (its fold's rule and check, signals and probe paid) | {auto['within_one_se']:.1%} "
            f"| {auto['cpu_share_of_grid']:.1%} |"
        )
    meets = [row for row in frontier if meets_targets(row)]
    lines += [
        "",
        (
            f"Knowing a replicate meets both targets at {len(meets)} of {len(frontier)} tolerances"
            + (f" (at best {max(r['within_one_se'] for r in meets):.1%} of trials)" if meets else "")
            + ": the pair asks a policy that sees signals measured in seconds to pick "
            + ("about as well as" if meets else "better than")
            + " one that had trained every recipe on the cell once."
        ),
    ]
    return lines


def markdown(
    state: dict[str, Any],
    analysis: dict[str, Any],
    pictures: list[str],
    cpu: float,
    final: bool,
    grid: dict[str, Any],
    elsewhere: dict[str, float] | None = None,
    remade: dict[str, Any] | None = None,
    joined: dict[str, Any] | None = None,
) -> str:
    lines = ["# Transfer study", ""]
    if not final:
        lines += ["**Partial: the grid is still running (or was stopped); the figures cover the cells listed.**", ""]
    sizes = ", ".join("all" if s is None else str(s) for s in grid["sizes"])
    lines += [
        f"This run's grid, run to {'completion' if final else 'this point'}: {', '.join(grid['backbones'])} x "
        f"{', '.join(grid['datasets'])} x {sizes} images per class (a smaller class gives all it has; a size "
        "no class reaches is skipped); earlier runs' cells are kept. "
        f"The analysis uses every cell with all recipes run: {len(analysis['cells'])}, "
        f"{cells_in_words(analysis['cells'])}." + (" The rule below is fitted on all of them." if final else ""),
        "",
        f"The grid's recipes: {', '.join(GRID)} (10 epochs each where they fine-tune). Every CPU share below is "
        "a share of their CPU time. `auto` also chooses from "
        + ", ".join(f"`{name}`" for name in RECIPES if name not in GRID)
        + " (half the blocks frozen, 5 epochs): it is run in every cell and counts for each cell's best, "
        "but stays out of the shares' denominator, so adding a choice cannot make every share smaller.",
        "",
    ]
    ran_on_grid_cpu = cells_ran_on(state["runs"], grid_cpu(state["runs"])) if state["runs"] else set()
    lines += [
        f"Machine: {runs_machine(state['runs'])}. Grid CPU time "
        f"(every run and signal measurement, summed over threads): {cpu / 3600:.2f} h"
        + (
            f"; the experiments below took {analysis['experiment_cpu_seconds'] / 3600:.2f} h more."
            if analysis.get("experiment_cpu_seconds")
            else "."
        ),
        "",
        *elsewhere_words(
            [
                r
                for r in state["runs"]
                if "reference_run" not in r and r["recipe"] not in EXPERIMENTS and cell_id(r) in ran_on_grid_cpu
            ],
            elsewhere or {},
        ),
        *remade_words(remade or {}, state["runs"]),
        *joined_words(joined or {}, state["runs"]),
        *rerun_words(analysis.get("reruns") or {}),
        f"Test sets: per data set, up to {HELD_OUT} images per class (a quarter of a smaller class) held out of "
        "every subset, so every size is scored on the same images; each subset's own validation split picks "
        "the epoch and the probe's L2.",
        "",
    ]
    lines += [
        "## Policies against each cell's best recipe",
        "",
        "| policy | cells | within one SE of the best | mean regret | max regret | CPU share of the grid |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in analysis["verdicts"].items():
        if not v.get("cells"):
            continue
        lines.append(
            f"| {name} | {v['cells']} | {v['within_one_se']:.0%} | {v['mean_regret']:.4f} | "
            f"{v['max_regret']:.4f} | {v['cpu_share_of_grid']:.1%} |"
        )
    lines += [
        "",
        f"Targets for auto: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's "
        "CPU time.",
        "",
        "`auto` is judged as it runs: the rule, fitted without the cell's data set, proposes a recipe; where "
        "that is fine-tuning, the fine-tuned model is kept only if its validation accuracy at its last epoch "
        "beats the feature_extraction run's (its head on the depths `train.probe_layers` names) by more than the "
        "rule's margin (in standard errors of that difference on the cell's validation split: sqrt(0.5 / n) "
        "each), else that head is (per seed, from the runs' own validation figures; the feature_extraction "
        "run is counted in its CPU). The rule proposes what did best on the study cells nearest the new "
        "data set in images a class and probe accuracy: their regret beyond one SE (the accuracy lost that the "
        "target counts: a pick within one SE is a hit however far inside, a near miss costs less than a far one) "
        "plus a CPU penalty, summed over them. How many cells it pools, the penalty's weight and the validation "
        "margin are chosen by leaving data sets out within the training data sets (the most held-out cells "
        f"within one SE while spending at most {TARGET_CPU:.0%} of their grid, the signals' CPU counted), so the "
        f"held-out one judges those choices too. '{NO_BUDGET}': the same without the penalty; '{NO_MARGIN}': "
        "nor a margin (a fine-tune kept wherever it beats the probe on validation at all). "
        f"'{PLAIN_REGRET}': the same minimising the whole regret, inside one SE too. '{BEST_EPOCH_CHECK}': the "
        "check comparing the fine-tune's best epoch, the highest of its epochs' validation figures and so "
        "flattering, and the rule fitted under that check (only the half-frozen 10-epoch runs record every "
        "epoch; another fine-tune reads its best epoch under both). "
        f"'{TREE_RULE}': the regression tree auto followed before, its leaves minimising the same loss under a "
        "CPU penalty whose weight is the smallest that keeps the training data sets' CPU at its aim's share of "
        "their grid; its validation margin, depth and smallest leaf, then that aim (from "
        f"{CPU_AIMS[0]:.0%} to {CPU_AIMS[-1]:.0%}) chosen by leaving data sets out the same way. "
        f"'{UNCHECKED}' is the tree method used before the "
        "check: the rule's pick as it is. " + seed_words(analysis["verdicts"]),
    ]
    lines += bootstrap_words(analysis.get("auto_bootstrap") or {})
    lines += expected_range_words(analysis.get("expected_range") or {})
    lines += perfect_check_words(analysis["verdicts"]) + miss_words(analysis.get("auto_misses") or [])
    lines += cpu_words(analysis.get("auto_cpu") or {}) + early_stop_words(analysis.get("early_stops") or [])
    lines += schedule_words(analysis.get("schedule") or {})
    for experiment in analysis.get("experiments") or []:
        lines += experiment_words(experiment)
    lines += cpu_per_wall_words(analysis.get("cpu_per_wall") or {})
    lines += replicate_words(analysis.get("repeatability") or {})
    bound = analysis["verdicts"].get(HINDSIGHT, {})
    at_target = analysis["verdicts"].get(HINDSIGHT_AT_TARGET, {})
    if bound.get("cells") and at_target.get("cells"):
        verdict = (
            "so the pair of targets is not out of reach on this grid: a policy meets both only by picking "
            "feature extraction wherever it is within one SE and giving up the cells where fine-tuning costs most."
            if at_target["cpu_share_of_grid"] <= TARGET_CPU
            else "so no policy meets both targets on this grid."
        )
        lines += [
            "",
            "The two hindsight rows are bounds, not policies: picks made knowing the results. The first takes "
            "in each cell the cheapest recipe within one SE of the best: "
            f"{bound['cpu_share_of_grid']:.1%} of the grid, the least a policy right everywhere can spend. The "
            f"second may miss in {1 - TARGET_SHARE:.0%} of the cells, and misses where that saves most: "
            f"{at_target['cpu_share_of_grid']:.1%}, {verdict}",
        ]
    lines.append("")
    backbone_verdicts = analysis.get("backbone_pick", {})
    if any(v.get("groups") for v in backbone_verdicts.values()):
        lines += [
            "## Choosing the backbone (`train.backbone: auto`)",
            "",
            "Per data set and size run with every backbone: the backbone each policy picks, trained with its "
            "auto recipe, against the best backbone and recipe of that data set and size.",
            "",
            "| policy | data set x size | within one SE of the best | mean regret | max regret |",
            "|---|---|---|---|---|",
        ]
        for name, v in backbone_verdicts.items():
            lines.append(
                f"| {name} | {v['groups']} | {v['within_one_se']:.0%} | {v['mean_regret']:.4f} | "
                f"{v['max_regret']:.4f} |"
            )
        lines += backbone_bound_words(backbone_verdicts)
        lines += backbone_comparison_words(analysis.get("leave_one_out_rules", {}), analysis.get("rule"))
        lines.append("")
    lines.append("")
    if final and analysis["rule"] is not None:
        lines += ["## The rule `strategy: auto` follows (transferline/model/advisor_rule.json)", ""]
        if NEAREST_CELLS in analysis["rule"]:
            lines += [*nearest_rule_words(analysis["rule"]), ""]
        else:
            lines += [
                "Fitted on every cell above; each leaf names the recipe with the least total regret beyond one SE "
                "plus CPU penalty on its cells after the validation check, which keeps a fine-tuned model only if "
                "it beats the probe on validation by more than the margin.",
                "",
                *fit_method_words(analysis["rule"].get("fit", {})),
                "",
                "```",
                *rule_lines(analysis["rule"]["tree"]),
                "```",
                "",
            ]
    lines += ["## Kendall tau of each signal against the best fine-tuned accuracy", ""]
    datasets = sorted({c["cell"].split("/")[0] for c in analysis["cells"]})
    lines += ["| signal | all cells | " + " | ".join(datasets) + " |", "|---" * (2 + len(datasets)) + "|"]
    for signal, row in analysis["kendall_tau"].items():
        cells = [row["all"], *[row.get(d) for d in datasets]]
        lines.append(f"| {signal} | " + " | ".join("n/a" if x is None else f"{x:+.2f}" for x in cells) + " |")
    lines += [
        "",
        "## Cells",
        "",
        "| cell | " + " | ".join([*RECIPES, "fastai"]) + " | best | auto pick | SE |",
        "|---" * (len(RECIPES) + 5) + "|",
    ]
    for c in analysis["cells"]:
        accs = " | ".join(f"{c['accuracy'][r]:.3f}" if r in c["accuracy"] else "-" for r in [*RECIPES, "fastai"])
        lines.append(f"| {c['cell']} | {accs} | {c['best']} | {c['auto_pick'] or '-'} | {c['standard_error']:.3f} |")
    lines += ["", *[f"![{p}]({p})" for p in pictures], ""]
    return "\n".join(lines)


def backbone_comparison_words(fold_rules: dict[str, Any], rule: dict[str, Any] | None) -> list[str]:
    """Which figure each fold's rule chose to compare backbones on, and the one the committed rule names."""
    chosen = Counter(r["backbone_comparison"]["compared_on"] for r in fold_rules.values() if "backbone_comparison" in r)
    if not chosen or rule is None or "backbone_comparison" not in rule:
        return []
    folds = ", ".join(f"{COMPARISON_POLICIES[name]} in {count}" for name, count in chosen.most_common())
    committed = rule["backbone_comparison"]
    name = committed["compared_on"]
    return [
        "",
        f"'{AUTO_BACKBONE}' compares what its fold's rule chose on the other data sets, each of their pairs "
        f"scored under a rule fitted without its data set (bench/backbone_fit.py): {folds} of "
        f"{sum(chosen.values())} folds. The rule fitted on every cell compares {COMPARISON_POLICIES[name]} "
        f"({committed['scores'][name]['within_one_se']:.0%} of {committed['pairs']} pairs, each scored leaving "
        "its data set out).",
    ]


def backbone_bound_words(verdicts: dict[str, Any]) -> list[str]:
    """What the backbone choice could gain, against what its signals gain."""
    bound = verdicts.get(BACKBONE_HINDSIGHT) or {}
    scored = {name: v for name, v in verdicts.items() if name != BACKBONE_HINDSIGHT and v.get("groups")}
    if not bound.get("groups") or not scored:
        return []
    best_name = max(scored, key=lambda name: (scored[name]["within_one_se"], -scored[name]["mean_regret"]))
    return [
        "",
        f"'{BACKBONE_HINDSIGHT}' is a bound, not a policy: it reaches {bound['within_one_se']:.0%}, the best "
        f"policy here ({best_name}) {scored[best_name]['within_one_se']:.0%}. The signals measured before "
        "training rank the two backbones no better than a fixed choice on these data sets: what decides is how "
        "each one's fine-tune turns out, which they do not foresee.",
    ]


def seed_words(verdicts: dict[str, Any]) -> str:
    """How a cell's one SE reads its seeds, and the by-seeds rows where cells ran different numbers of them."""
    bar = "a cell's one SE is its test split's binomial error or its seeds' spread, whichever is larger"
    if AUTO_BY_SEEDS[SEEDS_LARGE] not in verdicts:
        return f"Every cell ran as many seeds as the others: {bar}."
    return (
        f"'{AUTO_BY_SEEDS[SEEDS_SMALL]}' and '{AUTO_BY_SEEDS[SEEDS_LARGE]}': auto on the cells that ran "
        f"{SEEDS_SMALL} seeds (every cell up to {SMALL} images a class, and larger cells given more seeds) and on "
        f"those that ran {SEEDS_LARGE}; {bar}, so a cell run once has no seeds' spread in it and sets the "
        "stricter bar."
    )


def bootstrap_words(bootstrap: dict[str, Any]) -> list[str]:
    """How precisely the grid measures auto's two figures, whether it can tell them from the targets, and
    how they move together from one data set to the next."""
    if not bootstrap:
        return []
    share_low, share_high = bootstrap["within_one_se"]
    cpu_low, cpu_high = bootstrap["cpu_share_of_grid"]
    each_inside = share_low <= TARGET_SHARE <= share_high and cpu_low <= TARGET_CPU <= cpu_high
    verdict = (
        "each target lies inside its interval, so on this grid neither figure can be told from its target"
        if each_inside
        else "a target outside its interval is missed or met beyond this grid's noise"
    )
    per_dataset = bootstrap.get("per_dataset") or {}
    lines = [
        "",
        f"How precisely {bootstrap['datasets']} data sets pin auto's figures: drawing the data sets again with "
        f"replacement ({bootstrap['draws']:,} draws, each bringing all its cells, since cells of one data set "
        f"are not independent trials), the share within one SE spans {share_low:.0%} to {share_high:.0%} and "
        f"the CPU share {cpu_low:.1%} to {cpu_high:.1%} (95%): {verdict}. Both at once hold in "
        f"{bootstrap['both_targets_met']:.0%} of the draws. Per data set (held out):",
        "",
        "| data set | cells | within one SE | CPU share of its grid |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {v['cells']} | {v['within_one_se']:.0%} | {v['cpu_share_of_grid']:.1%} |"
        for name, v in per_dataset.items()
    ]
    if len(per_dataset) > 2:
        shares = [v["within_one_se"] for v in per_dataset.values()]
        cpus = [v["cpu_share_of_grid"] for v in per_dataset.values()]
        if len(set(shares)) > 1 and len(set(cpus)) > 1:
            r = statistics.correlation(shares, cpus)
            lines += [
                "",
                f"Across data sets the two figures move {'together' if r > 0 else 'apart'} (Pearson r "
                f"{r:+.2f}), so whether a target holds depends on the grid's mix of data sets as well as "
                "on the rule.",
            ]
    return lines


def perfect_check_words(verdicts: dict[str, dict[str, Any]]) -> list[str]:
    """What a better validation check could recover: auto's proposals with, per seed, the better test
    accuracy of the fine-tune and the probe (the best any check can do)."""
    auto, perfect = verdicts.get(AUTO, {}), verdicts.get(PERFECT_CHECK, {})
    if not auto.get("cells") or not perfect.get("cells"):
        return []
    recovered = round((perfect["within_one_se"] - auto["within_one_se"]) * auto["cells"])
    return [
        "",
        f"'{PERFECT_CHECK}' is a bound, not a policy: auto's own proposals, with per seed the better test "
        f"accuracy of the fine-tune and the probe, what no validation check can beat. It is within one SE in "
        f"{perfect['within_one_se']:.0%} of cells against auto's {auto['within_one_se']:.0%}: a better check "
        f"(a larger validation split, another margin) could recover {recovered} of auto's cells"
        + ("; every miss is in the rule's proposal." if recovered == 0 else "."),
    ]


def miss_words(misses: list[dict[str, Any]]) -> list[str]:
    """Where auto misses: each cell's proposal, its outcome after the check, and the recipe that did best."""
    if not misses:
        return []
    to_probe = sum(m["proposed"] == "feature_extraction" for m in misses)
    lines = [
        "",
        f"Where auto misses ({len(misses)} cells; in {to_probe} it proposed feature extraction where a fine-tune "
        f"won, in {len(misses) - to_probe} another fine-tune than the best):",
        "",
        "| cell | proposed | outcome after the check | best recipe | its accuracy | behind by (SE) |",
        "|---|---|---|---|---|---|",
    ]
    for m in misses:
        behind = (m["best_accuracy"] - m["outcome"]) / m["standard_error"]
        lines.append(
            f"| {m['cell']} | {m['proposed']} | {m['outcome']:.3f} | {m['best']} | {m['best_accuracy']:.3f} | "
            f"{behind:.1f} |"
        )
    return lines


def cpu_words(parts: dict[str, float]) -> list[str]:
    """Where auto's CPU goes, and what making each part free would leave: the bounds on a cheaper auto."""
    if not parts.get("grid"):
        return []
    target = TARGET_CPU * parts["grid"]

    def without(part: str) -> str:
        left = parts["spent"] - parts[part]
        return f"{left:.0f} s ({left / parts['grid']:.2%})"

    skipped = parts.get("random_features_skipped", 0.0)
    random_pass = f"the random-init forward pass behind the pretrained gain {parts['random_features']:.0f} s" + (
        f" (auto skips it wherever its rule's path for the cell does not split on that signal: {skipped:.0f} s "
        "not spent)"
        if skipped
        else ""
    )
    freed = (
        f"the first would leave auto at {without('random_features')} of the grid, the second at "
        if parts["random_features"]
        else "the random pass being skipped already, the second would leave auto at "
    )
    return [
        "",
        f"Where auto's CPU goes: {parts['spent']:.0f} s of the grid's {parts['grid']:.0f} s (the target: "
        f"{target:.0f} s). Measuring the signals takes {parts['signals']:.0f} s, of which {random_pass}; the "
        f"fine-tunes that the validation check threw away cost {parts['rejected_fine_tunes']:.0f} s. Even free, "
        + freed
        + f"{without('rejected_fine_tunes')} (stopping those fine-tunes early could save at most that).",
    ]


def rerun_words(reruns: dict[str, int]) -> list[str]:
    """How many runs were trained a second time (to record what the first run did not) and gave the same."""
    if not reruns.get("runs"):
        return []
    return [
        f"{reruns['runs']} runs were trained again to record their per-epoch figures; {reruns['reproduced']} of "
        "them reproduced their recorded test and validation accuracy exactly.",
        "",
    ]


def early_stop_words(rows: list[dict[str, Any]]) -> list[str]:
    """auto with an earlier stop of the fine-tunes it proposed, replayed from the runs' per-epoch records."""
    rows = [row for row in rows if row["within_one_se"] is not None]  # none before a cell is judged
    if not rows:
        return []
    lines = [
        "",
        "Stopping a proposed fine-tune early, replayed from each run's per-epoch validation accuracy: from the "
        "epoch given on, once its best validation accuracy so far trails the probe's by more than the gap, the "
        "probe's head ships and the remaining epochs are not paid for.",
        "",
        "| from epoch | gap (SE) | within one SE | CPU share | fine-tunes the final check kept, stopped |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['after_epoch']} | {row['gap_se']:g} | {row['within_one_se']:.0%} | "
            f"{row['cpu_share_of_grid']:.1%} | {row['kept_fine_tunes_stopped']} |"
        )
    return lines


def experiment_words(result: dict[str, Any]) -> list[str]:
    """An experimental recipe against the grid's, in the cells where it ran."""
    if not result.get("cells"):
        return []
    words = []
    for reference, versus in result["against"].items():
        words.append(
            f"against `{reference}` {versus['mean_difference']:+.3f} of test accuracy on average "
            f"({versus['min_difference']:+.3f} to {versus['max_difference']:+.3f}; within one SE of it in "
            f"{versus['within_one_se']} cells) at {versus['cpu_ratio']:.0%} of its CPU"
        )
    return [
        "",
        f"Experiment, not among auto's choices: `{result['recipe']}` ({EXPERIMENT_NOTES.get(result['recipe'], '')}), "
        f"in the {result['cells']} cells where every seed of it ran: {'; '.join(words)}. It is within one SE of "
        f"the best of auto's recipes in {result['within_one_se_of_best']} of {result['cells']} cells, and above "
        f"it in {result['above_best']}.",
    ]


def cpu_per_wall_words(ratios: dict[str, float]) -> list[str]:
    """How busy each recipe's threads were, as measured: recipes run in different sittings differ."""
    if not ratios:
        return []
    listed = ", ".join(f"{recipe} {ratio:.2f}" for recipe, ratio in ratios.items())
    return [
        "",
        f"CPU seconds over wall seconds, median per recipe (2 threads: at most 2): {listed}. The recipes were run "
        "in several sittings, and how busy their threads were differs between them; the CPU shares compare "
        "the CPU seconds as measured, so a share carries that spread too.",
    ]


def schedule_words(schedule: dict[str, Any]) -> list[str]:
    """The shorter schedule against the grid's, cell by cell."""
    if not schedule.get("cells"):
        return []
    return [
        "",
        f"The schedule's length: `{schedule['recipe']}` against `{schedule['reference']}` (10 epochs) scores "
        f"{schedule['mean_difference']:+.3f} of test accuracy on average ({schedule['min_difference']:+.3f} to "
        f"{schedule['max_difference']:+.3f}), at {schedule['cpu_ratio']:.0%} of its CPU; it is within one SE "
        f"of it in {schedule['within_one_se']} of {schedule['cells']} cells, the best recipe in "
        f"{schedule['best']}, and auto's pick in {schedule['picked']}.",
    ]


def fit_method_words(fit: dict[str, Any]) -> list[str]:
    """The chosen validation margin, tree depth and smallest leaf, and a table of what each candidate
    scored when data sets were left out."""
    if not fit:
        return []
    margin = fit.get("margin_se", 0.0)
    words = f"Validation margin {margin:g} SE, depth {fit['depth']}, smallest leaf {fit['min_leaf']} cells"
    if fit.get("loss"):
        words = f"Loss: the {fit['loss']}. " + words
    if fit.get("cpu_target") is not None and fit["cpu_weight"] > 0:
        words += f", CPU penalty weight {fit['cpu_weight']:.3g} (the smallest meeting {fit['cpu_target']:.0%})"
    elif fit.get("cpu_target") is not None:
        words += f", no CPU penalty needed (the loss alone spends at most {fit['cpu_target']:.0%} here)"
    scores = fit.get("chosen_from", {})
    if not scores:
        return [words + "."]
    parsed = {tuple(name.split("/")): v for name, v in scores.items()}
    margins = sorted({m for m, _, _ in parsed}, key=float)
    methods = sorted({(int(d), int(leaf)) for _, d, leaf in parsed})
    lines = [
        words + ", chosen leaving one data set out: within one SE of the best (mean regret) of each candidate,",
        "",
        "| validation margin (SE) | " + " | ".join(f"depth {d}, leaf {leaf}" for d, leaf in methods) + " |",
        "|---" * (1 + len(methods)) + "|",
    ]
    for margin in margins:
        row = [parsed[margin, str(d), str(leaf)] for d, leaf in methods]
        lines.append(
            f"| {float(margin):g} | "
            + " | ".join(f"{v['within_one_se']:.0%} ({v['mean_regret']:.4f})" for v in row)
            + " |"
        )
    return lines + aim_words(fit)


def aim_words(fit: dict[str, Any]) -> list[str]:
    """How the CPU penalty's aim was chosen: each candidate aim's rules judged leaving one data set out."""
    aims = fit.get("aims")
    if not aims:
        return []
    return [
        "",
        f"Then the CPU penalty's aim, chosen leaving one data set out the same way with that method: the most "
        f"cells within one SE among the aims that spend at most {fit['held_out_cpu_target']:.0%} of the held-out "
        f"grid, the signals' CPU counted; {float(fit['cpu_target']):.0%} was chosen.",
        "",
        "| aim (share of the training grid) | within one SE | mean regret | CPU share held out |",
        "|---|---|---|---|",
        *(
            f"| {float(a):.0%} | {v['within_one_se']:.0%} | {v['mean_regret']:.4f} | {v['cpu_share_of_grid']:.1%} |"
            for a, v in sorted(aims.items(), key=lambda item: float(item[0]))
        ),
    ]


def cells_in_words(cells: list[dict[str, Any]]) -> str:
    """The analysed cells as 'backbones x data set (sizes); ...', from the cells themselves: a study resumed
    with other arguments keeps the cells of earlier runs."""
    by_dataset: dict[str, set[int | None]] = {}
    backbones = sorted({c["cell"].split("/")[2] for c in cells})
    for cell in cells:
        dataset, size, _ = cell["cell"].split("/")
        by_dataset.setdefault(dataset, set()).add(None if size == "None" else int(size))
    order = {d: i for i, d in enumerate(DATASETS)}
    parts = [
        f"{d} ({', '.join('all' if s is None else str(s) for s in sorted(by_dataset[d], key=lambda x: x or 1 << 30))})"
        for d in sorted(by_dataset, key=lambda d: (order.get(d, len(order)), d))
    ]
    return f"{' and '.join(backbones)} on " + "; ".join(parts)


MAP_SIZES = (10, 30, 100, 400, 1000)  # images a class, the rows of the nearest-cells rule's decision map
MAP_PROBES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)  # linear probe validation accuracies, its columns


def nearest_rule_words(rule: dict[str, Any]) -> list[str]:
    """The nearest-cells rule: how it decides, how its settings were chosen, and what it proposes over a map
    of images a class and probe accuracy (the two signals it reads by default)."""
    policy, fit = rule[NEAREST_CELLS], rule.get("fit", {})
    signals = policy["signals"]
    lines = [
        f"Fitted on every cell above: for a new data set, the {policy['k']} of these {len(policy['cells'])} cells "
        f"nearest it in {', '.join(signals)} (counts on a log scale, each signal standardised on the cells) "
        f"pool, per recipe, their regret beyond one SE after the validation check plus {policy['cpu_weight']:g} "
        "times its CPU share of the cell's grid; the least total is proposed. The validation check then keeps "
        f"a fine-tuned model only if it beats the probe on validation by more than {rule['validation_margin_se']:g} "
        "SE. Every cell's signals and losses are in the rule file, so each decision names the cells it rests on.",
    ]
    if fit.get("best_settings"):
        lines += [
            "",
            f"k, the CPU weight and the margin were chosen among {fit['settings_tried']} settings by leaving one "
            f"data set out: the most held-out cells within one SE among those spending at most "
            f"{fit['cpu_target']:.0%} of the held-out grid, the signals' CPU counted, then the lower mean regret. "
            "The best of them:",
            "",
            "| margin (SE) | k | CPU weight | within one SE | mean regret | CPU share held out |",
            "|---|---|---|---|---|---|",
            *(
                f"| {b['margin_se']:g} | {b['k']} | {b['cpu_weight']:g} | {b['within_one_se']:.0%} | "
                f"{b['mean_regret']:.4f} | {b['cpu_share_of_grid']:.1%} |"
                for b in fit["best_settings"]
            ),
        ]
    if set(signals) == {"images_per_class", "probe_accuracy"}:
        lines += [
            "",
            "What it proposes (before the check) by images a class and the linear probe's validation accuracy:",
            "",
            "| images a class | " + " | ".join(f"probe {p:g}" for p in MAP_PROBES) + " |",
            "|---" * (1 + len(MAP_PROBES)) + "|",
        ]
        for size in MAP_SIZES:
            picks = [
                nearest_cells.choose(policy, {"images_per_class": size, "probe_accuracy": p}.__getitem__).recipe
                for p in MAP_PROBES
            ]
            lines.append(f"| {size} | " + " | ".join(picks) + " |")
    return lines


def rule_lines(node: dict[str, Any], indent: str = "") -> list[str]:
    """A rule's tree as nested if/else lines people can read."""
    if "recipe" in node:
        return [f"{indent}{node['recipe']}  ({node['cells']} cells)"]
    return [
        f"{indent}if {node['signal']} <= {node['threshold']:g}:",
        *rule_lines(node["le"], indent + "    "),
        f"{indent}else:",
        *rule_lines(node["gt"], indent + "    "),
    ]


def elsewhere_words(runs: list[dict[str, Any]], elsewhere: dict[str, float]) -> list[str]:
    """What ran on another kind of CPU than the grid's: more seeds, counted for accuracy only."""
    if not elsewhere:
        return []
    on = {run["cpu"] for run in runs} - set(elsewhere)
    parts = [
        f"{sum(run['cpu'] == cpu for run in runs)} runs on {cpu} ({seconds / 3600:.2f} h)"
        for cpu, seconds in sorted(elsewhere.items())
    ]
    return [
        f"More seeds: {', '.join(parts)}, not in the grid's CPU time. They add test accuracies; every CPU "
        f"share counts their recipes at the CPU seconds per epoch that {', '.join(sorted(on))} measured in the "
        "same cell, times the epochs each ran, so no share mixes two kinds of CPU.",
        "",
    ]


def joined_words(joined: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """The data sets whose every run ran on another kind of CPU than the grid's, and how the grid counts them."""
    if not joined:
        return []
    on = sorted({run["cpu"] for run in runs} - set(joined["cpus"]))
    ratios = ", ".join(f"{key} {ratio:.2f}" for key, ratio in joined["ratios"].items())
    return [
        f"Joined from another kind of CPU: {', '.join(joined['datasets'])}, {joined['runs']} runs on "
        f"{', '.join(joined['cpus'])} ({joined['measured_cpu_seconds'] / 3600:.2f} h, and "
        f"{joined['signals_measured_cpu_seconds'] / 3600:.2f} h of signals). The grid's CPU time counts them at "
        f"{joined['costed_cpu_seconds'] / 3600:.2f} h and {joined['signals_costed_cpu_seconds'] / 3600:.2f} h: "
        f"each run's own CPU seconds times what one of that CPU's seconds costs on {', '.join(on)}, the median "
        "ratio of the two kinds' seconds per epoch in the cells and recipes both ran, per backbone "
        f"({ratios}). So every share within those cells is as measured.",
        "",
    ]


def remade_words(remade: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """The recipes `--rerun` made again on another kind of CPU, and how the grid's CPU time counts them."""
    if not remade:
        return []
    on = sorted({run["cpu"] for run in runs} - set(remade["cpus"]))
    recipes = ", ".join(f"{n} {recipe}" for recipe, n in remade["recipes"].items())
    return [
        f"Made again: {recipes} runs on {', '.join(remade['cpus'])} "
        f"({remade['measured_cpu_seconds'] / 3600:.2f} h), each beside a run of the recipe it replaced "
        f"({', '.join(remade['replaced'])}, whose recorded runs are kept as that experiment). The grid's CPU "
        f"time counts them at {remade['costed_cpu_seconds'] / 3600:.2f} h: the replaced recipe's CPU seconds "
        f"on {', '.join(on)} in the same cell, times the ratio of the two runs measured together (median "
        f"{remade['median_ratio']:.2f}).",
        "",
    ]


def runs_machine(runs: list[dict[str, Any]]) -> str:
    """Where the runs ran (each run records its CPU and threads), not where the report is written: a study
    resumed or re-reported on another machine must not pass its runs off as that machine's."""
    cpus = sorted({str(run["cpu"]) for run in runs})
    threads = sorted({int(run["threads"]) for run in runs})
    return f"{' and '.join(cpus) or 'none yet'}, {' or '.join(map(str, threads)) or '-'} threads a run"
