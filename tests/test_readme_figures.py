"""README.md quotes benchmark figures only from the last report: its table is generated from bench/RESULTS.json.
The README and the page it links for the evidence behind `auto` (docs/transfer-study.md) quote every
transfer-study figure from its committed report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.report import (
    README_BEGIN,
    README_END,
    ReadmeMarkersMissing,
    render_readme_table,
    with_readme_table,
)
from bench.transfer_analysis import meets_targets
from bench.transfer_design import AUTO_BY_SEEDS, SEEDS_LARGE, SEEDS_SMALL, TREE_RULE
from bench.transfer_study import records_of, seeds_per_cell

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STUDY_PAGE = PROJECT_ROOT / "docs" / "transfer-study.md"  # the evidence behind `auto`, linked from the README


def documented_prose() -> str:
    """The README and the study's page it links, their lines joined (both wrap anywhere): the figures a test
    looks for may stand in either."""
    return " ".join(f"{(PROJECT_ROOT / 'README.md').read_text()}\n{STUDY_PAGE.read_text()}".split())


def readme_block(text: str) -> str:
    return text[text.index(README_BEGIN) + len(README_BEGIN) : text.index(README_END)].strip("\n")


def test_readme_figures_equal_the_last_bench_report():
    """Regenerate with `python -m bench --readme` when this fails after a bench run."""
    report = json.loads((PROJECT_ROOT / "bench" / "RESULTS.json").read_text())
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme_block(readme)
    assert block == render_readme_table(report)
    for figure in report["figures"]:  # every figure of the report, by its name and value
        assert f"| {figure['benchmark']} | {figure['name']} |" in block


def sample_report(value: float) -> dict:
    machine = {"date": "d", "cpu": "AMD EPYC", "cpu_instruction_sets": ["avx2", "avx512f"], "cores": 2, "python": "3"}
    figure = {"benchmark": "tune", "name": "study", "value": value, "unit": "x", "baseline": "", "target": ">= 20x"}
    return {
        "machine": machine,
        "quick": False,
        "total_seconds": 60.0,
        "figures": [figure | {"met": value >= 20, "verdict": "met" if value >= 20 else "NOT met"}],
    }


def test_the_table_is_replaced_between_the_markers_and_nothing_else_changes():
    readme = f"# Title\n\nBefore.\n\n{README_BEGIN}\nstale 38.9x\n{README_END}\n\nAfter.\n"
    once = with_readme_table(readme, sample_report(12.9))
    assert "38.9x" not in once and "| tune | study | 12.9x | >= 20x | NOT met |" in once
    assert "avx512f" in once and "Not met: tune: study." in once
    assert once.startswith("# Title\n\nBefore.\n\n") and once.endswith(f"{README_END}\n\nAfter.\n")
    assert with_readme_table(once, sample_report(12.9)) == once


def test_a_readme_without_markers_is_refused_with_the_fix():
    with pytest.raises(ReadmeMarkersMissing, match="bench:begin"):
        with_readme_table("# no markers\n", sample_report(25.0))


def test_readme_quotes_how_backbone_auto_compares_and_how_that_judges():
    """The README's paragraph on choosing the backbone quotes bench/results/transfer_study.json: auto's share,
    each comparison's alone, what the folds and the committed rule chose, and always MobileNetV2."""
    from bench.backbone_fit import AUTO_BACKBONE, COMPARISON_POLICIES

    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    prose = documented_prose()
    picks = study["backbone_pick"]
    auto = picks[AUTO_BACKBONE]
    assert (
        f"is within one SE of the best backbone and recipe for {auto['within_one_se']:.0%} of {auto['groups']} "
        in prose
    )
    alone = ", ".join(f"{picks[COMPARISON_POLICIES[name]]['within_one_se']:.0%}" for name in COMPARISON_POLICIES)
    assert f"Alone, the four pick within one SE for {alone.rsplit(', ', 1)[0]} and {alone.rsplit(', ', 1)[1]}." in prose
    folds = {r["backbone_comparison"]["compared_on"] for r in study["leave_one_out_rules"].values()}
    assert folds == {study["rule"]["backbone_comparison"]["compared_on"]} == {"probe_accuracy"}
    assert (
        f"All {len(study['leave_one_out_rules'])} folds chose the linear probe, and so does the committed rule" in prose
    )
    assert f"Always MobileNetV2 reaches {picks['always mobilenet_v2']['within_one_se']:.0%}" in prose


def test_readme_quotes_the_transfer_studys_verdict_for_auto_as_committed():
    """The README's prose on `strategy: auto` quotes bench/results/transfer_study.json: its held-out share and
    CPU share, the data-set bootstrap's intervals around them, and what knowing a replicate of the grid buys
    (rerun `python -m bench.transfer_study --report-only`, then the README)."""
    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    readme = (PROJECT_ROOT / "README.md").read_text()
    auto = study["verdicts"]["auto (leave one data set out)"]
    assert f"| auto | {auto['within_one_se']:.0%} (target 80%) |" in readme
    assert f"| {auto['cpu_share_of_grid']:.1%} (target 15%) |" in readme
    bootstrap = study["auto_bootstrap"]
    share_low, share_high = bootstrap["within_one_se"]
    cpu_low, cpu_high = bootstrap["cpu_share_of_grid"]
    prose = documented_prose()
    assert f"spans {share_low:.0%} to {share_high:.0%}" in prose
    assert f"share {cpu_low:.1%} to {cpu_high:.1%} (95%)" in prose
    assert f"only {bootstrap['both_targets_met']:.0%} of the draws" in prose
    backbone = study["backbone_pick"]["hindsight: the backbone whose auto outcome was better"]
    assert f"turns out better would reach {backbone['within_one_se']:.0%}" in prose
    coverage = study["expected_range"]
    assert f"held the test accuracy auto got in {coverage['inside']} of {coverage['cells']} cells" in prose
    assert f"at a median width of {coverage['median_width']:.2f}" in prose
    repeat = study["repeatability"]
    frontier = {row["tolerance_se"]: row for row in repeat["frontier"]}
    assert f"in only {repeat['within_one_se']:.1%} of {repeat['trials']} trials" in prose
    assert f"replicate's best costs {frontier[0.0]['cpu_share_of_grid']:.1%}" in prose
    tolerant = frontier[1.0]
    assert f"saves CPU ({tolerant['cpu_share_of_grid']:.1%}) at a share of {tolerant['within_one_se']:.1%}" in prose
    half = frontier[0.5]
    assert f"within 0.5 SE it reaches {half['within_one_se']:.1%} at {half['cpu_share_of_grid']:.1%}" in prose
    meets_both = [row for row in repeat["frontier"] if meets_targets(row)]
    assert ("no tolerance from 0 to 2 SE meets both targets" in prose) == (not meets_both)
    assert_seed_split_quoted(study, readme, prose)
    on_trials = repeat["auto"]
    assert f"auto is within one SE in {on_trials['within_one_se']:.1%} at {on_trials['cpu_share_of_grid']:.1%}" in prose


def assert_seed_split_quoted(study: dict, readme: str, prose: str) -> None:
    """Where cells ran different numbers of seeds, the README quotes auto on each group and the one-seed cells'
    share of its misses; where every cell ran as many, it quotes no such split."""
    labels = (AUTO_BY_SEEDS[SEEDS_SMALL], AUTO_BY_SEEDS[SEEDS_LARGE])
    if labels[1] not in study["verdicts"]:
        assert f"| {labels[0]}" not in readme and "ran one seed each" not in prose
        return
    by_seeds = [study["verdicts"][label] for label in labels]
    assert f"| {by_seeds[0]['within_one_se']:.0%} / {by_seeds[1]['within_one_se']:.0%} |" in readme
    assert f"| {by_seeds[0]['cpu_share_of_grid']:.1%} / {by_seeds[1]['cpu_share_of_grid']:.1%} |" in readme
    assert f"within one SE in {by_seeds[0]['within_one_se']:.0%} of those {by_seeds[0]['cells']} cells" in prose
    once = by_seeds[1]["cells"]
    once_words = f"The {once} cells at 400 images a class that ran one seed each"
    assert (once_words if once > 1 else "The one cell at 400 images a class that ran one seed") in prose
    misses = study["auto_misses"]
    seeds = seeds_per_cell(records_of(study))
    theirs = [m for m in misses if seeds[m["cell"]] == 1]
    near = sum(m["best_accuracy"] - m["outcome"] <= 2 * m["standard_error"] for m in theirs)
    verb = "is" if len(theirs) == 1 else "are"
    assert f"{len(theirs)} of its {len(misses)} misses {verb} theirs ({near} within 2 SE)" in prose


def test_readme_quotes_the_committed_rules_verdict_on_data_it_never_saw():
    """The README's figures for `auto` on the first held-out data set are
    bench/results/transfer_holdout_cifar10.json's (rerun `python -m bench.transfer_holdout --report-only --datasets
    cifar10 --rule bench/results/transfer_holdout_cifar10.json`, then the README)."""
    holdout = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_holdout_cifar10.json").read_text())
    prose = documented_prose()
    auto = holdout["verdicts"]["auto (the committed rule)"]
    assert f"its {auto['cells']} cells auto is within one SE in {auto['within_one_se']:.0%}" in prose
    assert f"at {auto['cpu_share_of_grid']:.1%} of its grid's CPU" in prose
    for label in ("always feature_extraction", "always full"):
        verdict = holdout["verdicts"][label]
        assert (
            f"{label.removeprefix('always ')} {verdict['within_one_se']:.0%} at {verdict['cpu_share_of_grid']:.1%}"
            in prose
        )


def standard_errors_behind(misses: list[dict]) -> dict[str, float]:
    """Per missed cell of a holdout report, how many standard errors its outcome trails the best recipe."""
    return {m["cell"]: (m["best_accuracy"] - m["outcome"]) / m["standard_error"] for m in misses}


def assert_holdout_round_quoted(dataset: str, fitted_on: int, rule_words: str, labels: tuple[str, ...]) -> dict:
    """The README quotes bench/results/transfer_holdout_<dataset>.json's verdicts for auto, `labels` and the
    hindsight bound's CPU; returns the verdicts for further checks."""
    holdout = json.loads((PROJECT_ROOT / "bench" / "results" / f"transfer_holdout_{dataset}.json").read_text())
    prose = documented_prose()
    assert holdout["rule_fitted_on"] == fitted_on and holdout["datasets"] == [dataset]
    auto = holdout["verdicts"]["auto (the committed rule)"]
    assert f"On its {auto['cells']} cells the {rule_words} is within one SE in {auto['within_one_se']:.0%}" in prose
    assert f"at {auto['cpu_share_of_grid']:.1%} of the grid's CPU ({holdout['grid_cpu_seconds'] / 3600:.2f} h" in prose
    for label in labels:
        verdict = holdout["verdicts"][label]
        assert f"{label} {verdict['within_one_se']:.0%} at {verdict['cpu_share_of_grid']:.1%}" in prose
    cheapest = holdout["verdicts"]["hindsight: cheapest within one SE"]
    assert f"known only in hindsight, costs {cheapest['cpu_share_of_grid']:.1%}" in prose
    return holdout["verdicts"]


def test_readme_quotes_the_seven_set_rules_verdict_on_the_emoji_round():
    """The README's figures for the second held-out round are bench/results/transfer_holdout_emoji.json's
    (rerun `python -m bench.transfer_holdout --report-only --datasets emoji --rule
    bench/results/transfer_holdout_emoji.json`, then the README)."""
    labels = ("always partial_quarter", "always feature_extraction", "always full", "fastai fine_tune")
    assert_holdout_round_quoted("emoji", 50, "rule fitted on seven", labels)


def test_readme_quotes_the_eight_set_rules_verdict_on_the_quickdraw_round():
    """The README's figures for the third held-out round are bench/results/transfer_holdout_quickdraw.json's
    (rerun `python -m bench.transfer_holdout --report-only --datasets quickdraw
    --rule bench/results/transfer_holdout_quickdraw.json`, then the README)."""
    labels = ("always feature_extraction", "always partial_quarter", "always full", "fastai fine_tune")
    assert_holdout_round_quoted("quickdraw", 58, "rule fitted on eight", labels)


def test_readme_quotes_the_committed_rules_verdict_on_the_mnist_round_and_the_rule_before_it():
    """The README's figures for the fourth held-out round are bench/results/transfer_holdout_mnist.json's
    (rerun `python -m bench.transfer_holdout --report-only --datasets mnist --rule
    bench/results/transfer_holdout_mnist.json`), and the rule before the aim's choice judged on its runs,
    bench/results/transfer_holdout_mnist_aim_fixed.json's (`--rule
    bench/results/transfer_holdout_quickdraw_probe_layers.json --suffix aim_fixed`)."""
    from bench.transfer_analysis import meets_targets

    labels = ("always feature_extraction", "always partial_quarter", "always full", "fastai fine_tune")
    assert_holdout_round_quoted("mnist", 58, "rule committed now", labels)
    prose = documented_prose()
    results = PROJECT_ROOT / "bench" / "results"
    tree = study_tree()
    judged = json.loads((results / "transfer_holdout_mnist.json").read_text())
    before = json.loads((results / "transfer_holdout_mnist_aim_fixed.json").read_text())
    # the rule judged there has the splits and leaves of the tree the study fits on all its cells (refitted
    # since on MNIST too, its leaves' statistics count more cells)
    assert decisions(judged["rule"]["tree"]) == decisions(tree) and "aims" not in before["rule"]["fit"]
    mnist_cells = sorted({f"mnist/{r['size']}/{r['backbone']}" for r in judged["runs"]})
    assert glyph_round_rule()["fitted_on"] == sorted({*judged["rule"]["fitted_on"], *mnist_cells})
    assert before["runs"] == judged["runs"]
    auto, aim_fixed = (r["verdicts"]["auto (the committed rule)"] for r in (judged, before))
    assert not meets_targets(auto) and meets_targets(aim_fixed)
    assert (
        f"within one SE in {aim_fixed['within_one_se']:.0%} of the {aim_fixed['cells']} cells at "
        f"{aim_fixed['cpu_share_of_grid']:.1%} of the grid's CPU: both targets" in prose
    )


def test_readme_quotes_the_glyph_round_for_the_tree_and_the_nearest_cells():
    """The README's figures for the fifth held-out round: the tree then committed, judged by the round itself
    (bench/results/transfer_holdout_glyphs.json; rerun `python -m bench.transfer_holdout --report-only
    --datasets glyphs --rule bench/results/transfer_holdout_glyphs.json`), and the nearest cells committed
    now on the same runs (bench/results/transfer_holdout_glyphs_nearest_cells.json, `--report-only --datasets
    glyphs --suffix nearest_cells`): neither meets the targets there, the nearest cells get one cell more."""
    from bench.transfer_analysis import meets_targets

    labels = ("always partial_quarter", "always feature_extraction", "always full", "fastai fine_tune")
    verdicts = assert_holdout_round_quoted("glyphs", 66, "tree fitted on nine", labels)
    prose = documented_prose()
    results = PROJECT_ROOT / "bench" / "results"
    tree_round = json.loads((results / "transfer_holdout_glyphs.json").read_text())
    nearest = json.loads((results / "transfer_holdout_glyphs_nearest_cells.json").read_text())
    committed = json.loads((PROJECT_ROOT / "transferline" / "model" / "advisor_rule.json").read_text())
    study = json.loads((results / "transfer_study.json").read_text())
    later = ("glyphs/", "clipart/", "units/")
    before_glyphs = sorted(c["cell"] for c in study["cells"] if not c["cell"].startswith(later))
    assert tree_round["rule"]["fitted_on"] == before_glyphs == nearest["rule"]["fitted_on"]
    assert "nearest_cells" in nearest["rule"] and nearest["runs"] == tree_round["runs"]
    # the glyphs (and later the clip art and the units) joined the study since: the committed rule is fitted on
    # their cells too
    assert committed["fitted_on"] == sorted(c["cell"] for c in study["cells"]) != before_glyphs
    tree, near = verdicts["auto (the committed rule)"], nearest["verdicts"]["auto (the committed rule)"]
    assert (
        f"are within one SE in {near['within_one_se']:.0%} of those cells at {near['cpu_share_of_grid']:.1%}" in prose
    )
    gained = round(near["within_one_se"] * near["cells"]) - round(tree["within_one_se"] * tree["cells"])
    assert f"{NUMBER_WORDS[gained]} cell more" in prose and not meets_targets(tree) and not meets_targets(near)


def test_readme_quotes_the_clipart_round_for_the_two_signals_and_their_six_signal_rival():
    """The README's figures for the sixth held-out round: the committed nearest cells, judged by the round
    itself (bench/results/transfer_holdout_clipart.json; rerun `python -m bench.transfer_holdout --report-only
    --datasets clipart --rule bench/results/transfer_holdout_clipart.json`), and the six-signal rival on the
    same runs (transfer_holdout_clipart_six_signals.json). The rival replaces the two signals only with more
    cells within one SE inside the CPU target: the README's verdict must follow that rule."""
    from bench.transfer_analysis import meets_targets
    from transferline.model.nearest_cells import NEAREST_CELLS

    labels = ("always feature_extraction", "always partial_quarter", "always full", "fastai fine_tune")
    assert_holdout_round_quoted("clipart", 72, "nearest cells fitted on ten", labels)
    prose = documented_prose()
    results = PROJECT_ROOT / "bench" / "results"
    two = json.loads((results / "transfer_holdout_clipart.json").read_text())
    six = json.loads((results / "transfer_holdout_clipart_six_signals.json").read_text())
    committed = json.loads((PROJECT_ROOT / "transferline" / "model" / "advisor_rule.json").read_text())
    study = json.loads((results / "transfer_study.json").read_text())
    assert six["runs"] == two["runs"] and six["rule"]["fitted_on"] == two["rule"]["fitted_on"]
    # the round judged the rule then committed, fitted on every study cell but the clip art's and the units', which
    # joined since
    clipart = sorted(c["cell"] for c in study["cells"] if c["cell"].startswith("clipart/"))
    units = sorted(c["cell"] for c in study["cells"] if c["cell"].startswith("units/"))
    assert len(clipart) == len(two["cells"]) and not set(clipart + units) & set(two["rule"]["fitted_on"])
    assert committed["fitted_on"] == sorted([*two["rule"]["fitted_on"], *clipart, *units])
    clipart_held_out = study["auto_bootstrap"]["per_dataset"]["clipart"]
    pooled = study["verdicts"]["auto (leave one data set out)"]
    assert f"held out of the fit in turn they score {clipart_held_out['within_one_se']:.0%} there too" in prose
    assert f"the units then took it to {pooled['within_one_se']:.0%} at {pooled['cpu_share_of_grid']:.1%}" in prose
    assert len(six["rule"][NEAREST_CELLS]["signals"]) == 6 > len(committed[NEAREST_CELLS]["signals"])
    ours, rival = two["verdicts"]["auto (the committed rule)"], six["verdicts"]["auto (the committed rule)"]
    same = sum(a["proposed"] == b["proposed"] for a, b in zip(two["cells"], six["cells"], strict=True))
    assert f"proposes the same recipe in all {same} cells" in prose and same == len(two["cells"])
    assert f"within one SE in {rival['within_one_se']:.0%} of them at {rival['cpu_share_of_grid']:.1%}" in prose
    rival_cells, our_cells = (round(v["within_one_se"] * v["cells"]) for v in (rival, ours))
    adopt = rival_cells > our_cells and rival["cpu_share_of_grid"] <= 0.15
    assert not adopt and "A tie in cells keeps the two signals" in prose and meets_targets(ours)
    best_probe = sum(c["best"] == "feature_extraction" for c in two["cells"])
    assert f"Feature extraction is the best recipe in {NUMBER_WORDS[best_probe]} of the six cells" in prose


def glyph_round_rule() -> dict:
    """The last tree auto followed before the nearest cells: the rule the glyph round judged, fitted on the
    study's nine data sets before the glyphs joined (refitted on the ten since, the tree method splits
    elsewhere: the study's `tree_rule`)."""
    results = PROJECT_ROOT / "bench" / "results"
    return json.loads((results / "transfer_holdout_glyphs.json").read_text())["rule"]


def study_tree() -> dict:
    """The tree of that rule, whose splits and leaves the earlier rounds' trees are compared with."""
    return glyph_round_rule()["tree"]


def decisions(tree: dict) -> dict | str:
    """What a rule decides (its splits and leaves' recipes), without the statistics of the cells it was
    fitted on."""
    if "recipe" in tree:
        return tree["recipe"]
    return {"signal": tree["signal"], "threshold": tree["threshold"], **{k: decisions(tree[k]) for k in ("le", "gt")}}


def test_each_kind_of_cpu_keeps_its_latest_verdicts_when_another_kind_runs_the_benchmarks():
    """A full run on an AMD EPYC after one on an Intel Xeon: both CPUs' targets stay in the report, each with
    what it missed; a partial run replaces only its own benchmarks' row entries; quick runs change nothing."""
    from bench.report import targets_by_cpu

    def report(cpu: str, date: str, value: float, quick: bool = False) -> dict:
        sample = sample_report(value)
        sample["machine"] |= {"cpu": cpu, "date": date}
        sample["benchmarks"] = {"tune": {"seconds": 1.0, "status": "ok"}}
        return sample | {"quick": quick}

    intel = report("Intel Xeon", "2026-12-02T10:00:00", 25.0)
    amd = report("AMD EPYC", "2026-12-04T10:00:00", 12.9)
    amd["targets_by_cpu"] = targets_by_cpu(intel, amd)  # intel predates the table: its own figures seed it
    assert list(amd["targets_by_cpu"]) == ["Intel Xeon", "AMD EPYC"]
    block = render_readme_table(amd)
    assert "| Intel Xeon | 2026-12-02 | 1 of 1 | none |" in block
    assert "| AMD EPYC | 2026-12-04 | 0 of 1 | tune: study |" in block
    rerun = report("AMD EPYC", "2026-12-05T10:00:00", 30.0)
    assert targets_by_cpu(amd, rerun)["AMD EPYC"]["tune"]["targets"][0]["met"] is True
    assert targets_by_cpu(amd, rerun)["Intel Xeon"] == amd["targets_by_cpu"]["Intel Xeon"]
    assert targets_by_cpu(amd, report("AMD EPYC", "2026-12-06", 1.0, quick=True)) == amd["targets_by_cpu"]


def test_readme_quotes_the_later_rules_verdicts_on_the_quickdraw_round():
    """The rules committed after the quickdraw round, fitted without its cells, judged there: the one before
    the multi-layer head on the round's recorded runs (bench/results/transfer_holdout_quickdraw_loss_beyond_one_se.json,
    `python -m bench.transfer_holdout --report-only --datasets quickdraw --suffix loss_beyond_one_se`), the one
    after it with the round's feature_extraction runs made again with that head
    (bench/results/transfer_holdout_quickdraw_probe_layers.json, `--rerun ... --suffix probe_layers`), and the
    committed one, its CPU aim chosen, on those runs (bench/results/transfer_holdout_quickdraw_aim_chosen.json,
    `--report-only --runs bench/results/transfer_holdout_quickdraw_probe_layers.json --suffix aim_chosen`)."""
    results = PROJECT_ROOT / "bench" / "results"
    before = json.loads((results / "transfer_holdout_quickdraw_loss_beyond_one_se.json").read_text())
    head = json.loads((results / "transfer_holdout_quickdraw_probe_layers.json").read_text())
    current = json.loads((results / "transfer_holdout_quickdraw_aim_chosen.json").read_text())
    tree = study_tree()
    assert before["rule"]["fit"]["loss"] == "regret beyond one SE"
    assert decisions(before["rule"]["tree"]) != decisions(tree)
    assert "aims" not in head["rule"]["fit"] and decisions(head["rule"]["tree"]) != decisions(tree)
    assert decisions(current["rule"]["tree"]) == decisions(tree) and "aims" in current["rule"]["fit"]
    for judged in (head, current):
        remade = [r for r in judged["runs"] if r["recipe"] == "feature_extraction"]
        assert remade and all(len(r["probe_layers"]) > 1 for r in remade)
    prose = documented_prose()
    for judged in (before, head, current):
        auto = judged["verdicts"]["auto (the committed rule)"]
        assert (
            f"within one SE in {auto['within_one_se']:.0%} of the {auto['cells']} cells at "
            f"{auto['cpu_share_of_grid']:.1%} of the grid's CPU" in prose
        )


SIZES_COLUMNS = ("partial (the default)", "partial, 10 epochs (the former default)", "plain-script recipe", "auto")


def test_readme_quotes_the_train_sizes_table_as_measured():
    """The README's table of the default recipe against the plain script is bench/results/train_sizes.json's,
    row for row, with the CPU that ran it (rerun `python -m bench.train_bench sizes`, then the README)."""
    sizes = json.loads((PROJECT_ROOT / "bench" / "results" / "train_sizes.json").read_text())
    readme = (PROJECT_ROOT / "README.md").read_text()
    runs = {(run["per_class"], run["recipe"]): run for run in sizes["runs"]}
    for per_class in sorted({per_class for per_class, _ in runs}):
        first = runs[per_class, SIZES_COLUMNS[0]]
        cells = [
            f"{runs[per_class, name]['test_accuracy']:.3f} in {runs[per_class, name]['wall_seconds']:.0f} s"
            for name in SIZES_COLUMNS
        ]
        assert f"| {per_class} ({first['test_images']:,} test images) | {' | '.join(cells)} |" in readme
    prose = " ".join(readme.split())
    assert f"(`python -m bench.train_bench sizes`, 2-core {sizes['machine']['cpu']}," in prose


def test_readme_quotes_the_signal_stand_ins_as_measured():
    """The README's comparison of the pretrained gain's stand-ins is bench/results/transfer_signal_variants.json's
    (rerun `python -m bench.signal_variants`, then the README)."""
    from bench.signal_variants import CAPPED_ROW, PIXEL_ROW, RANDOM_INIT

    rows = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_signal_variants.json").read_text())["rows"]
    prose = documented_prose()
    committed = rows[RANDOM_INIT]
    assert (
        f"the study's auto of then, {committed['within_one_se']:.0%} at {committed['cpu_share_of_grid']:.1%}" in prose
    )
    pixels = [row for label, row in rows.items() if label.startswith(PIXEL_ROW)]
    shares = ", ".join(f"{row['within_one_se']:.0%}" for row in pixels[:-1]) + f" and {pixels[-1]['within_one_se']:.0%}"
    cpus = (
        ", ".join(f"{row['cpu_share_of_grid']:.1%}" for row in pixels[:-1])
        + f" and {pixels[-1]['cpu_share_of_grid']:.1%}"
    )
    assert f"gives {shares} of cells within one SE, at {cpus} of the CPU" in prose
    (capped,) = [row for label, row in rows.items() if label.startswith(CAPPED_ROW)]
    assert (
        f"at most 100 images a class keeps {capped['within_one_se']:.0%} but at {capped['cpu_share_of_grid']:.1%}"
        in prose
    )


NUMBER_WORDS = (
    *("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
)


def test_readme_quotes_the_moved_fitting_settings_as_measured():
    """The README's figures for auto's fitting settings moved are bench/results/transfer_auto_knobs.json's
    (rerun `python -m bench.auto_knobs`, then the README): without the aim's choice more cells at more CPU
    than the target allows; with negative margins fewer cells, neither meeting both targets."""
    from bench.auto_knobs import KNOBS
    from bench.transfer_analysis import TARGET_CPU, meets_targets

    rows = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_auto_knobs.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == [label for label, _, _ in KNOBS]
    prose = documented_prose()
    fixed, margins = rows
    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    auto = study["verdicts"][TREE_RULE]
    committed = {m["cell"] for m in study["tree_misses"]}
    cells = round(auto["within_one_se"] * auto["cells"])
    assert fixed["cells"] == margins["cells"] == auto["cells"] == 86
    assert f"it gets {fixed['within_one_se']:.0%} at {fixed['cpu_share_of_grid']:.1%}" in prose
    more = fixed["cells_within_one_se"] - cells
    gained = committed - set(fixed["misses"])
    assert f"{NUMBER_WORDS[more]} cells more ({NUMBER_WORDS[len(gained)]} gained" in prose
    assert {"digits/100/efficientnet_lite0", "mnist/100/mobilenet_v2", "units/400/efficientnet_lite0"} <= gained
    lost = set(fixed["misses"]) - committed
    assert f"{NUMBER_WORDS[len(gained)]} gained, among them" in prose and f"; {NUMBER_WORDS[len(lost)]} lost)" in prose
    more_cpu = 100 * (fixed["cpu_share_of_grid"] - auto["cpu_share_of_grid"])
    assert f"for {more_cpu:.1f} points more CPU, over the CPU target" in prose
    assert fixed["cpu_share_of_grid"] > TARGET_CPU and not meets_targets(fixed)
    assert f"with the units too it gives {margins['within_one_se']:.0%} at {margins['cpu_share_of_grid']:.1%}" in prose
    fewer = cells - margins["cells_within_one_se"]
    assert f"{NUMBER_WORDS[fewer]} {'cell' if fewer == 1 else 'cells'} fewer than the tree method" in prose
    won, gave_up = committed - set(margins["misses"]), set(margins["misses"]) - committed
    assert f"({NUMBER_WORDS[len(won)]} gained, {NUMBER_WORDS[len(gave_up)]} lost)" in prose
    assert margins["cells_within_one_se"] < cells and not meets_targets(margins)


def test_readme_quotes_the_other_policy_families_as_measured():
    """The README's figures for the nearest-cells and ridge families are
    bench/results/transfer_auto_families.json's (rerun `python -m bench.auto_families`, then the README),
    and its claims of which variants meet both targets and of the
    families' best fixed settings in hindsight hold."""
    from bench.auto_families import FEATURE_SETS, PER_BACKBONE, PICKERS, RACE
    from bench.transfer_analysis import meets_targets

    rows = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_auto_families.json").read_text())["rows"]
    families = [(f, s) for f in PICKERS for s in FEATURE_SETS] + [(p, "all six signals") for p in (PER_BACKBONE, RACE)]
    assert [(row["family"], row["signals"]) for row in rows] == families
    prose = documented_prose()
    near_all, near_two, ridge_all, ridge_two, per_backbone, race = rows
    assert (
        f"racing two fine-tunes gives {race['within_one_se']:.0%} at {race['cpu_share_of_grid']:.1%}, "
        f"{race['cells_within_one_se']} cells" in prose
    )
    proposed = sum(race["races_proposed"].values())
    assert f"its folds propose a race in {NUMBER_WORDS[proposed]} held-out cell" in prose
    assert (
        f"apart gives {per_backbone['within_one_se']:.0%} at {per_backbone['cpu_share_of_grid']:.1%}, each tree"
        in prose
    )
    assert (
        f"gives {near_all['within_one_se']:.0%} at {near_all['cpu_share_of_grid']:.1%} on all six signals and "
        f"{near_two['within_one_se']:.0%} at {near_two['cpu_share_of_grid']:.1%} on images a class and the probe"
        in prose
    )
    assert (
        f"signals gives {ridge_all['within_one_se']:.0%} at {ridge_all['cpu_share_of_grid']:.1%} and "
        f"{ridge_two['within_one_se']:.0%} at {ridge_two['cpu_share_of_grid']:.1%}" in prose
    )
    bounds = [row["hindsight"]["within_cpu_target"] for row in rows[:4]]
    best = max(bounds, key=lambda b: (b["cells_within_one_se"], -b["cpu_share_of_grid"]))
    assert (
        f"the most cells any of them gets within 15% of the CPU is {best['cells_within_one_se']} "
        f"(at {best['cpu_share_of_grid']:.1%})" in prose
    )
    # with the units no family meets both targets, the nearest cells on six signals missing the CPU one
    assert not any(meets_targets(row) for row in rows) and near_all["cpu_share_of_grid"] > 0.15
    assert "no variant here meets both targets" in prose and best["within_one_se"] < 0.80
    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    committed, auto = study["verdicts"][TREE_RULE], study["verdicts"]["auto (leave one data set out)"]
    assert near_two["within_one_se"] == auto["within_one_se"]
    assert near_two["cpu_share_of_grid"] == pytest.approx(auto["cpu_share_of_grid"])
    more = near_two["cells_within_one_se"] - round(committed["within_one_se"] * committed["cells"])
    assert not meets_targets(committed) and f"{NUMBER_WORDS[more]} cells more than the tree" in prose
    two_more = near_all["cells_within_one_se"] - near_two["cells_within_one_se"]
    assert f"the six signals with {NUMBER_WORDS[two_more]} cells more than the two" in prose
    more_cpu = 100 * (near_all["cpu_share_of_grid"] - near_two["cpu_share_of_grid"])
    assert f"for {more_cpu:.1f} points more CPU" in prose and two_more > 0


def test_readme_quotes_the_landmarkers_as_measured():
    """The README's figures for the probe's landmarkers as a seventh signal are
    bench/results/transfer_landmarkers.json's (rerun `python -m bench.landmarkers`, then the README): the cells
    each gets against the tree method's, none meeting the targets, and which held-out folds' rules split on
    each."""
    from bench.landmarkers import LANDMARKERS
    from bench.transfer_analysis import meets_targets

    rows = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_landmarkers.json").read_text())["rows"]
    assert [row["landmarker"] for row in rows] == list(LANDMARKERS)
    prose = documented_prose()
    slope = rows[-1]
    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    auto = study["verdicts"][TREE_RULE]
    cells = round(auto["within_one_se"] * auto["cells"])
    assert {row["cells"] for row in rows} == {auto["cells"]}
    scored = ", ".join(str(row["cells_within_one_se"]) for row in rows[:2])
    assert f"against the tree method's {cells} cells they get {scored} and {slope['cells_within_one_se']}" in prose
    assert not any(meets_targets(row) for row in rows)
    shares = ", ".join(f"{row['cpu_share_of_grid']:.1%}" for row in rows[:2])
    assert f"at {shares} and {slope['cpu_share_of_grid']:.1%} for the probe's training accuracy" in prose
    assert [row["folds_splitting_on_it"] for row in rows] == [["fashion_mnist", "units"], [], ["elpv_levels"]]


def test_readme_quotes_the_multi_layer_head_as_measured():
    """The README's figures for the feature_extraction head on several depths are
    bench/results/transfer_probe_layers.json's (rerun `python -m bench.probe_layers`, then the README): its gain
    over the last layer, and auto's verdict with it, which meets the share target and not the CPU one."""
    from bench.transfer_analysis import TARGET_CPU, TARGET_SHARE

    result = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_probe_layers.json").read_text())
    summary, verdict = result["comparison"], result["verdicts"]["probe_layers"]
    prose = documented_prose()
    assert f"it scores {summary['mean_gain']:+.4f} of test accuracy over the last-layer probe on average" in prose
    assert f"({summary['min_gain']:+.3f} to {summary['max_gain']:+.3f})" in prose
    assert f"better by more than one SE in {summary['better_by_one_se']} cells and worse in " in prose
    assert f"{summary['worse_by_one_se']}, and above every fine-tune of the grid in " in prose
    assert f"{summary['above_best_recipe']}; its fit takes" in prose
    cells = round(verdict["within_one_se"] * verdict["cells"])
    assert f"within one SE in {verdict['within_one_se']:.1%} of cells ({cells}) at " in prose
    assert f"{verdict['cpu_share_of_grid']:.1%} of the grid's CPU" in prose
    assert verdict["within_one_se"] >= TARGET_SHARE and verdict["cpu_share_of_grid"] > TARGET_CPU
    assert result["verdicts"]["last_layer"]["within_one_se"] < TARGET_SHARE  # the study's own verdict
    assert result["probe_layers"] == [0.25, 0.5, 0.75, 1.0]


def test_readme_quotes_the_rule_variants_as_measured():
    """The README's comparison of fitting methods is bench/results/transfer_rule_variants.json's (rerun
    `python -m bench.rule_variants`, then the README), on the study's cells: the tree method, its CPU aim
    chosen inside each fold, gives the study's verdict for it; no chosen method meets both targets, one fixed
    method does; the figures quoted for the same method aimed at 15%, the other chosen methods, the fixed
    method that meets both and the method with the best share are the table's."""
    from bench.rule_variants import AIM_CHOSEN, CHOSEN, FIXED_AIM
    from bench.transfer_analysis import meets_targets

    methods = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_rule_variants.json").read_text())["methods"]
    prose = documented_prose()
    (committed,) = [m for m in methods if m["committed"]]
    (aimed_at_target,) = [m for m in methods if (m["loss"], m["cpu_penalty"], m["depth"], m["min_leaf"]) == FIXED_AIM]
    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    now = study["verdicts"][TREE_RULE]
    assert {m["cells"] for m in methods} == {now["cells"]} and f"On the {now['cells']} cells" in prose
    # the committed method's row is the study's own verdict for the tree method
    assert (committed["within_one_se"], committed["cpu_share_of_grid"]) == pytest.approx(
        (now["within_one_se"], now["cpu_share_of_grid"])
    )
    chosen = [m for m in methods if "chosen" in (m["depth"], m["cpu_penalty"], m["loss"])]
    assert (
        not any(meets_targets(m) for m in chosen) and "no chosen fitting method of a tree meets both targets" in prose
    )
    assert f"gives the study's {committed['within_one_se']:.0%} at {committed['cpu_share_of_grid']:.1%}" in prose
    assert f"aimed at 15% {aimed_at_target['within_one_se']:.0%} at {aimed_at_target['cpu_share_of_grid']:.1%}" in prose
    assert sorted(committed["aims_chosen"].values()) == [0.12] * 4 + [0.13] * 3 + [0.14] * 5
    assert "the folds keep 12% (four of them), 13% (three) and 14% (five)" in prose
    aim_chosen = [m for m in methods if m["cpu_penalty"] == AIM_CHOSEN]
    whole, either = (next(m for m in aim_chosen if m["loss"] == loss) for loss in ("regret", CHOSEN))
    assert f"the whole regret gives {whole['within_one_se']:.0%} at {whole['cpu_share_of_grid']:.1%}" in prose
    assert f"choosing the loss {either['within_one_se']:.0%} at {either['cpu_share_of_grid']:.1%}" in prose
    (meeting,) = [m for m in methods if meets_targets(m)]
    assert (meeting["loss"], meeting["cpu_penalty"], meeting["depth"], meeting["min_leaf"]) == (
        "misses beyond one SE",
        "budget",
        2,
        2,
    )
    assert (
        f"one fixed method meets both, the misses beyond one SE under the penalty at depth 2 with two cells a "
        f"leaf, {meeting['within_one_se']:.0%} at {meeting['cpu_share_of_grid']:.1%}" in prose
    )
    best = max(methods, key=lambda m: (m["within_one_se"], -m["cpu_share_of_grid"]))
    assert (best["loss"], best["cpu_penalty"], best["depth"]) == ("misses beyond one SE", "none", 3)
    assert (
        f"the best share of any method, {best['within_one_se']:.0%}, is the misses beyond one SE at depth 3 with "
        f"no penalty, at {best['cpu_share_of_grid']:.1%} of the CPU" in prose
    )


def test_readme_tables_every_held_out_round_and_pools_only_the_rules_committed_then():
    """The README's table of held-out rounds is `python -m bench.holdout_rounds`'s, from the rounds' committed
    reports; its prose pools the rules committed when their rounds ran, and the nearest cells' unseen rounds."""
    from bench.holdout_rounds import COMMITTED, JUDGEMENTS, cells_within, load_report, rounds_table

    readme = (PROJECT_ROOT / "README.md").read_text()
    assert rounds_table() in readme
    assert rounds_table() in STUDY_PAGE.read_text()
    prose = documented_prose()
    reports = {j.report: load_report(j.report) for j in JUDGEMENTS}
    rounds = {"cifar10", "emoji", "quickdraw", "mnist", "glyphs", "clipart", "units", "icons"}
    assert {r["datasets"][0] for r in reports.values()} == rounds
    committed = [reports[j.report]["verdicts"][COMMITTED] for j in JUDGEMENTS if j.committed_then]
    assert len(committed) == len(rounds)  # one committed rule a round
    within, cells = sum(cells_within(v) for v in committed), sum(v["cells"] for v in committed)
    assert (
        f"the rules committed at the time were within one SE in {within} of {cells} cells ({within / cells:.0%})"
        in prose
    )
    # the committed method (nearest cells on images a class and the probe, every recipe) on rounds it had not seen
    nearest = [j for j in JUDGEMENTS if j.rule in ("nearest cells", "nearest cells, 2 signals")]
    assert [j.data_set for j in nearest] == ["letter glyphs", "clip art", "Wesnoth units", "desktop icons"]
    hits = [cells_within(reports[j.report]["verdicts"][COMMITTED]) for j in nearest]
    total = [reports[j.report]["verdicts"][COMMITTED]["cells"] for j in nearest]
    rounds_seen = NUMBER_WORDS[len(nearest)]
    assert f"have been judged on {rounds_seen} rounds they had not seen: {sum(hits)} of {sum(total)} cells" in prose


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a markdown renderer gives the headings: lower case, punctuation dropped, spaces as dashes."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)  # a shell comment is no heading
    headings = re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_of_the_readme_and_its_pages_resolves():
    """A link to a file that moved, or to a heading renamed, fails here rather than on a reader."""
    pages = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
    assert STUDY_PAGE in pages
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            linked = (page.parent / target).resolve() if target else page
            if not linked.exists() or (anchor and anchor not in heading_anchors(linked.read_text())):
                broken.append(f"{page.name}: {target}#{anchor}")
    assert broken == []


def test_readme_names_the_committed_model_by_its_digest():
    """The README's "gives the committed model back" names the model.pt that the committed run record
    (metrics/train_run.json, written beside dvc.lock's models/) describes, by the first 16 hex digits of its
    SHA-256, so a retrain that moves the bytes must update the claim."""
    run = json.loads((PROJECT_ROOT / "metrics" / "train_run.json").read_text())
    assert f"gives the committed model back on the AMD EPYC (`{run['model_sha256'][:16]}`" in documented_prose()


def test_the_study_page_quotes_the_units_round_and_the_misses_it_names():
    """The seventh held-out round (bench/results/transfer_holdout_units.json; rerun `python -m bench.transfer_holdout
    --report-only --datasets units --rule bench/results/transfer_holdout_units.json`): the nearest cells then
    committed, fitted on every study cell before the units joined, and each of their misses there with how far
    behind the best recipe it fell; the grid-only rival on the same runs; then the units' joining, after which
    both rules were refitted on every cell, the units' included."""
    from transferline.model.nearest_cells import NEAREST_CELLS

    labels = ("always feature_extraction", "always partial_quarter", "always full", "fastai fine_tune")
    assert_holdout_round_quoted("units", 78, "nearest cells fitted on eleven", labels)
    holdout = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_holdout_units.json").read_text())
    committed = json.loads((PROJECT_ROOT / "transferline" / "model" / "advisor_rule.json").read_text())
    study = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_study.json").read_text())
    units = sorted(c["cell"] for c in study["cells"] if c["cell"].startswith("units/"))
    assert len(units) == len(holdout["cells"]) and not set(units) & set(holdout["rule"]["fitted_on"])
    assert committed["fitted_on"] == sorted([*holdout["rule"]["fitted_on"], *units])  # joined since
    prose = documented_prose()
    behind = standard_errors_behind(holdout["misses"])
    assert f"The rule's {NUMBER_WORDS[len(behind)]} misses are all fine-tunes it did not train" in prose
    assert all(m["best"] != "feature_extraction" for m in holdout["misses"])
    at_400 = [f"{behind[f'units/400/{backbone}']:.1f}" for backbone in ("efficientnet_lite0", "mobilenet_v2")]
    assert f"on both backbones, {at_400[0]} and {at_400[1]} SE behind the best" in prose
    assert f"0.930, {behind['units/100/mobilenet_v2']:.1f} SE" in prose
    assert f"0.751, {behind['units/30/mobilenet_v2']:.1f} SE" in prose
    coverage = holdout["expected_range"]
    assert coverage["inside"] == coverage["cells"] and f"in all {coverage['cells']} cells (median width" in prose
    grid_only = json.loads((PROJECT_ROOT / "bench" / "results" / "transfer_holdout_units_grid_only.json").read_text())
    assert grid_only["runs"] == holdout["runs"] and grid_only["rule"]["fitted_on"] == holdout["rule"]["fitted_on"]
    judged = grid_only["rule"][NEAREST_CELLS]
    assert f"fitted on the same 78 cells: k = {judged['k']}, CPU weight {judged['cpu_weight']}" in prose
    rival_rule = json.loads((PROJECT_ROOT / "bench" / "results" / "advisor_rule_grid_only.json").read_text())
    assert rival_rule["fitted_on"] == committed["fitted_on"]  # refitted on the same cells as the committed rule
    refits = (committed[NEAREST_CELLS], rival_rule[NEAREST_CELLS])
    assert (
        f"the committed one to k = {refits[0]['k']}, CPU weight {refits[0]['cpu_weight']}, the rival "
        f"to k = {refits[1]['k']}, CPU weight {refits[1]['cpu_weight']}." in prose
    )
    pooled = study["verdicts"]["auto (leave one data set out)"]
    held_out = study["auto_bootstrap"]["per_dataset"]["units"]
    assert held_out["within_one_se"] == holdout["verdicts"]["auto (the committed rule)"]["within_one_se"]
    assert f"the pooled verdict is {pooled['within_one_se']:.0%} at {pooled['cpu_share_of_grid']:.1%}" in prose
    rival = grid_only["verdicts"]["auto (the committed rule)"]
    cells = rival["cells"]
    assert (
        f"within one SE in {rival['within_one_se']:.0%} of the {cells} cells at {rival['cpu_share_of_grid']:.1%}"
        in prose
    )


def test_the_study_page_quotes_the_icons_round_and_the_rival_it_judged_beside_the_committed_rule():
    """The eighth held-out round (bench/results/transfer_holdout_icons.json; rerun `python -m bench.transfer_holdout
    --report-only --datasets icons --rule bench/results/transfer_holdout_icons.json`): the nearest cells committed
    now, fitted on every study cell, and the grid-only rival fitted on the same cells, both judged on the same
    runs; a tie in cells keeps the committed rule, and the icons have not joined the study."""
    from bench.holdout_rounds import cells_within

    labels = ("always feature_extraction", "always partial_quarter", "always full", "fastai fine_tune")
    verdicts = assert_holdout_round_quoted("icons", 86, "nearest cells fitted on twelve", labels)
    results = PROJECT_ROOT / "bench" / "results"
    holdout = json.loads((results / "transfer_holdout_icons.json").read_text())
    rival = json.loads((results / "transfer_holdout_icons_grid_only.json").read_text())
    committed_rule = json.loads((PROJECT_ROOT / "transferline" / "model" / "advisor_rule.json").read_text())
    rival_rule = json.loads((results / "advisor_rule_grid_only.json").read_text())
    # both rules judged are the ones committed now, fitted on the same cells, none of them the icons'
    assert holdout["rule"] == committed_rule and rival["rule"] == rival_rule and rival["runs"] == holdout["runs"]
    assert rival_rule["fitted_on"] == committed_rule["fitted_on"]
    assert not any(cell.startswith("icons/") for cell in committed_rule["fitted_on"])
    study = json.loads((results / "transfer_study.json").read_text())
    assert not any(c["cell"].startswith("icons/") for c in study["cells"])  # not joined: the page says so
    prose = documented_prose()
    assert "The icons have not joined the study yet" in prose
    ours, theirs = verdicts["auto (the committed rule)"], rival["verdicts"]["auto (the committed rule)"]
    assert cells_within(ours) == cells_within(theirs)  # a tie in cells keeps the committed rule
    assert (
        f"within one SE in {theirs['within_one_se']:.0%} of the {theirs['cells']} cells at "
        f"{theirs['cpu_share_of_grid']:.1%} of the grid's CPU: the same {NUMBER_WORDS[cells_within(theirs)]} cells"
        in prose
    )
    assert f"at {theirs['cpu_share_of_grid']:.1%} of the grid's CPU against the committed rule's " in prose
    assert f"against the committed rule's {ours['cpu_share_of_grid']:.1%}" in prose
    behind = standard_errors_behind(holdout["misses"])
    assert set(behind) == {"icons/10/mobilenet_v2", "icons/100/mobilenet_v2"}
    assert {m["best"] for m in holdout["misses"]} == {"full"}
    assert f"(0.533 against 0.550, {behind['icons/10/mobilenet_v2']:.1f} SE)" in prose
    assert f"0.730 against 0.747 ({behind['icons/100/mobilenet_v2']:.1f} SE)" in prose
    rival_behind = standard_errors_behind(rival["misses"])
    assert set(rival_behind) == set(behind)  # "the same six cells"
    assert f"(0.723, {rival_behind['icons/100/mobilenet_v2']:.1f} SE)" in prose
    coverage = holdout["expected_range"]
    assert (
        f"in {coverage['inside']} of the {coverage['cells']} cells ({coverage['below']} below it; median width" in prose
    )
    pick = holdout["backbone_pick"]["the better linear probe"]
    assert (
        f"picks within one SE at {round(pick['within_one_se'] * pick['groups'])} of the {pick['groups']} sizes" in prose
    )
