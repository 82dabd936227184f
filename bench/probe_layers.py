"""The feature_extraction head reading several depths of the body, against the last layer alone.

A frozen body's last blocks are the most ImageNet-specific; earlier blocks keep edges, textures and colours
that a far-off task (solar cells, digits, drawings) may need and that no head on the last layer can get back.
Evci et al. (Head2Toe, ICML 2022) fit a linear head on pooled features from many depths and match fine-tuning
on such tasks. Here, in every cell of the transfer study: the pretrained body's pooled outputs at the depths
`train.probe_layers` names (transferline/model/feature_taps.py), side by side, and the same logistic head as
the last-layer probe (transferline/model/head.py, its L2 chosen on validation), scored on the cell's held-out
test images, with the CPU each head's fit takes. Both heads read one forward pass: the taps cost no more.

Then auto is judged as the study judges it (bench/transfer_analysis.py `fit_tree_rule`, leaving one data set
out) with each cell's feature_extraction runs given the multi-layer head's validation and test accuracy: its
validation check then weighs a fine-tune against this head, the model it would ship instead. Its runs' CPU
keeps the study's measurement plus the difference between the two heads' fits measured here.

It reads the study's prepared data (bench/.work/transfer_study, made by `python -m bench.transfer_study`)
and bench/results/transfer_study.json, as it stood before its feature_extraction runs were made again with
this head (their last-layer runs are kept as the study's experiment `feature_extraction_last_layer`).
About 10 minutes on 2 cores. Writes bench/results/transfer_probe_layers.{md,json}.
Usage: python -m bench.probe_layers
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import numpy as np

from bench.common import machine, results_dir, write_results
from bench.signal_variants import judge
from bench.transfer_analysis import TARGET_CPU, TARGET_SHARE, cell_id, cell_name
from bench.transfer_design import BACKBONES, DATASETS, SIZES
from bench.transfer_report import meets_targets
from bench.transfer_study import (
    RULE_FILE,
    WORK,
    base_params,
    held_out_test,
    prepared_data,
    resolve_source,
    study_cells,
)

HEADS = ("last_layer", "probe_layers")
LAST_LAYER_RECIPE = "feature_extraction_last_layer"  # the study's experiment (bench/transfer_design.py)


def head_accuracies(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], classes: int, params) -> dict:
    """The logistic head on `features` (train, val, test): its validation and test accuracy and fit CPU."""
    from transferline.model.head import fit_probe

    start = time.process_time()
    probe = fit_probe(
        features["train"],
        labels["train"],
        features["val"],
        labels["val"],
        classes,
        params.probe_l2,
        standardize=params.probe_standardize,
        label_smoothing=params.probe_label_smoothing,
    )
    seconds = time.process_time() - start
    logits = features["test"] @ probe.weight.T + probe.bias
    return {
        "val_accuracy": float(probe.val_accuracy),
        "test_accuracy": float(np.mean(logits.argmax(1) == labels["test"])),
        "fit_cpu_seconds": seconds,
        "features": int(features["train"].shape[1]),
    }


def measure_cells(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per measured cell of the study, both heads (HEADS) fitted on one tapped forward pass."""
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.model.backbones import build_model, get_spec, imagenet_normalization
    from transferline.model.features import compute_features
    from transferline.model.training import configure_threads, resolve_runtime

    image_size = json.loads(RULE_FILE.read_text())["image_size"]  # the study's, which its rule records
    measured = {}
    for backbone in BACKBONES:
        norm = imagenet_normalization(get_spec(backbone))
        params = base_params(backbone, False, strategy="feature_extraction")
        runtime = resolve_runtime(params)
        configure_threads(params, runtime)
        for dataset in DATASETS:
            source = resolve_source(dataset, WORK)
            test_features = None
            for size in SIZES:
                name = cell_name((dataset, size, backbone))
                if name not in study["signals"]:
                    continue
                data = prepared_data(WORK, dataset, source, size, norm, image_size)
                if data is None:
                    continue
                prepared, test_prepared = data
                info = read_dataset(prepared)
                spec = PreprocessSpec.from_dict(info["preprocess"])
                classes = info["classes"]
                model, _ = build_model(backbone, len(classes), True, feature_layers=params.probe_layers)
                splits = {s: load_split(prepared, s, len(classes), spec.image_size) for s in ("train", "val")}
                if test_features is None:  # the held-out test set is the same for every size of a data set
                    splits["test"] = held_out_test(test_prepared, classes, spec.image_size)
                tapped = {s: compute_features(model, split, spec, runtime, 128) for s, split in splits.items()}
                if test_features is None:
                    test_features = (tapped["test"], splits["test"].labels)
                tapped["test"] = test_features[0]
                labels = {"train": splits["train"].labels, "val": splits["val"].labels, "test": test_features[1]}
                last = {s: model.last_layer(f) for s, f in tapped.items()}
                measured[name] = {
                    "last_layer": head_accuracies(last, labels, len(classes), params),
                    "probe_layers": head_accuracies(tapped, labels, len(classes), params),
                    "taps": ["head" if t is None else t for t in model.taps],
                }
    return measured


def with_head(study: dict[str, Any], measured: dict[str, dict[str, Any]], head: str) -> dict[str, Any]:
    """A copy of the study's state whose feature_extraction runs carry `head`'s validation and test accuracy,
    their CPU the study's plus what fitting `head` takes beyond the last-layer head (never less)."""
    state = copy.deepcopy(study)
    for run in state["runs"]:
        figures = measured.get(cell_name((run["dataset"], run["size"], run["backbone"])))
        if run["recipe"] != "feature_extraction" or figures is None:
            continue
        run["val_accuracy"] = figures[head]["val_accuracy"]
        run["test_accuracy"] = figures[head]["test_accuracy"]
        run["cpu_seconds"] += max(0.0, figures[head]["fit_cpu_seconds"] - figures["last_layer"]["fit_cpu_seconds"])
    return state


def comparison(study: dict[str, Any], measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The multi-layer head against the last-layer one and the cell's best recipe, per cell and in sum."""
    cells = {c["cell"]: c for c in study["cells"]}
    rows = []
    for name, figures in sorted(measured.items()):
        cell = cells[name]
        best = max(v for k, v in cell["accuracy"].items() if k != "fastai")
        rows.append(
            {
                "cell": name,
                "last_layer": figures["last_layer"]["test_accuracy"],
                "probe_layers": figures["probe_layers"]["test_accuracy"],
                "best_recipe": cell["best"],
                "best": best,
                "standard_error": cell["standard_error"],
            }
        )
    gains = [r["probe_layers"] - r["last_layer"] for r in rows]
    return {
        "rows": rows,
        "mean_gain": statistics.fmean(gains),
        "min_gain": min(gains),
        "max_gain": max(gains),
        "better_by_one_se": sum(g > r["standard_error"] for g, r in zip(gains, rows, strict=True)),
        "worse_by_one_se": sum(-g > r["standard_error"] for g, r in zip(gains, rows, strict=True)),
        "above_best_recipe": sum(r["probe_layers"] > r["best"] for r in rows),
        "fit_cpu_seconds": {h: sum(m[h]["fit_cpu_seconds"] for m in measured.values()) for h in HEADS},
    }


def markdown(study: dict[str, Any], result: dict[str, Any], cpu: str) -> str:
    summary, verdicts = result["comparison"], result["verdicts"]
    taps = ", ".join(sorted({" + ".join(m["taps"]) for m in result["measured"].values()}))
    lines = [
        "# The feature_extraction head on several depths",
        "",
        f"The transfer study's {len(summary['rows'])} cells (bench/results/transfer_study.json; prepared data "
        f"re-read, features and heads measured on {cpu}, 2 threads). `train.probe_layers` "
        f"{list(result['probe_layers'])} taps {taps}: the pooled outputs side by side, one logistic head "
        "(L2 chosen on validation), scored on each cell's held-out test images.",
        "",
        "| head | mean test accuracy |",
        "|---|---|",
        *(
            f"| {label} | {statistics.fmean(r[head] for r in summary['rows']):.4f} |"
            for head, label in (("last_layer", "last layer (the study's probe)"), ("probe_layers", "probe_layers"))
        ),
        "",
        f"Against the last layer: {summary['mean_gain']:+.4f} of test accuracy on average "
        f"({summary['min_gain']:+.3f} to {summary['max_gain']:+.3f}); better by more than the cell's one SE in "
        f"{summary['better_by_one_se']} of {len(summary['rows'])} cells, worse by more in "
        f"{summary['worse_by_one_se']}; above the best of the grid's recipes in {summary['above_best_recipe']}. "
        f"Fitting the heads took {summary['fit_cpu_seconds']['last_layer']:.0f} s and "
        f"{summary['fit_cpu_seconds']['probe_layers']:.0f} s of CPU over all cells; the forward pass is shared.",
        "",
        f"The last-layer head refitted here differs from the study's feature_extraction runs by more than half a "
        f"point in {result['last_layer_differs']} cells (another CPU, other threads).",
        "",
        "auto judged as the study judges it, leaving one data set out: the last-layer row is the study's own "
        "verdict; in the probe_layers row every feature_extraction run carries the multi-layer head's figures, "
        "so the validation check weighs each fine-tune against it. Targets: within one SE in "
        f">= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's CPU.",
        "",
        "| feature_extraction head | within one SE | cells | mean regret | CPU share | meets both |",
        "|---|---|---|---|---|---|",
    ]
    for head in HEADS:
        v = verdicts[head]
        cells = round(v["within_one_se"] * v["cells"])
        lines.append(
            f"| {head} | {v['within_one_se']:.1%} | {cells} | {v['mean_regret']:.4f} | "
            f"{v['cpu_share_of_grid']:.1%} | {'yes' if meets_targets(v) else 'no'} |"
        )
    lines += [
        "",
        "## Cells",
        "",
        "| cell | last layer | probe_layers | best recipe | its accuracy | SE |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['cell']} | {r['last_layer']:.3f} | {r['probe_layers']:.3f} | {r['best_recipe']} | "
            f"{r['best']:.3f} | {r['standard_error']:.3f} |"
            for r in summary["rows"]
        ),
    ]
    return "\n".join(lines) + "\n"


def as_last_layer_study(study: dict[str, Any]) -> dict[str, Any]:
    """The study as it stood when feature_extraction read the last layer alone: once its feature_extraction
    ran again with the multi-layer head (`--rerun`), the last-layer runs are kept as the experiment
    LAST_LAYER_RECIPE, and here take feature_extraction's place again, its cells' figures with them. A data
    set that joined since (its feature_extraction never read the last layer alone) was not in it."""
    kept = [r for r in study["runs"] if r["recipe"] == LAST_LAYER_RECIPE]
    if not kept:
        return study
    stood = {cell_id(r) for r in kept}
    runs = [
        r for r in study["runs"] if cell_id(r) in stood and r["recipe"] not in ("feature_extraction", LAST_LAYER_RECIPE)
    ]
    state = {**study, "runs": [*runs, *({**r, "recipe": "feature_extraction"} for r in kept)]}
    cells, errors = study_cells(state)
    state["cells"] = [
        {
            "cell": c.name,
            "accuracy": c.accuracy,
            "best": max(c.accuracy, key=c.accuracy.get),
            "standard_error": errors[c.name],
        }
        for c in cells
    ]
    return state


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    study = as_last_layer_study(json.loads((results_dir() / "transfer_study.json").read_text()))
    measured = measure_cells(study)
    missing = sorted(set(c["cell"] for c in study["cells"]) - set(measured))
    if missing:
        raise SystemExit(f"no prepared data for {len(missing)} cells (first: {missing[0]}): run the study first")
    verdicts = {"last_layer": judge(study), "probe_layers": judge(with_head(study, measured, "probe_layers"))}
    result = {
        "measured": measured,
        "probe_layers": list(base_params(BACKBONES[0], False).probe_layers),
        "comparison": comparison(study, measured),
        "verdicts": verdicts,
        "last_layer_differs": sum(
            abs(m["last_layer"]["test_accuracy"] - c["accuracy"]["feature_extraction"]) > 0.005
            for c in study["cells"]
            for m in [measured[c["cell"]]]
        ),
    }
    cpu = machine()["cpu"]
    write_results("transfer_probe_layers", {**result, "measured_on": cpu}, markdown(study, result, cpu))


if __name__ == "__main__":
    main()
