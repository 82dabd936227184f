"""Pure metric and gate logic."""

import numpy as np
import pytest

from transferline.config import GateParams
from transferline.evaluation.gate import ChampionScore, ClassChange, evaluate_gate
from transferline.evaluation.metrics import classification_report, expected_calibration_error
from transferline.evaluation.onnx_classifier import softmax
from transferline.evaluation.paired_test import compare_paired, mcnemar_exact_p

EXPORT_REPORT = {
    "parity": [{"batch_size": 1, "max_abs_diff": 2e-6, "top1_agreement": 1.0}],
    "latency": {"p95_ms": 3.0},
    "model_bytes": 9_000_000,
}


SAME_CLASSES = ClassChange.between("m:1", ["a", "b"], ["a", "b"])


def metrics(accuracy=0.9, macro_f1=0.9, min_recall=0.8):
    return {"accuracy": accuracy, "macro_f1": macro_f1, "min_class_recall": min_recall, "non_finite_outputs": 0}


def test_perfect_and_confident_predictions():
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[labels]
    report = classification_report(probs, labels, ["a", "b", "c"], top_k=2)
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0 and report["roc_auc_ovr"] == 1.0
    assert report["ece"] == pytest.approx(0.0)
    assert report["per_class"]["c"]["support"] == 2


def test_ece_of_an_overconfident_model():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1]] * 4)  # 90% confident, right half the time
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


def test_non_finite_outputs_are_counted_not_crashing():
    probs = softmax(np.array([[np.nan, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]]))
    report = classification_report(probs, np.array([1, 0, 2]), ["a", "b", "c"])
    assert report["non_finite_outputs"] == 1
    assert report["accuracy"] == pytest.approx(2 / 3)


def test_gate_passes_and_records_every_check():
    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None, "no champion is deployed yet")
    assert decision["passed"] and decision["reason"].startswith("passed")
    by_name = {c["name"]: c for c in decision["checks"]}
    assert by_name["no_regression_vs_champion_accuracy"]["verdict"] == "n/a"
    assert by_name["class_set"]["verdict"] == "n/a" and decision["class_set"] is None
    assert by_name["accuracy"] == {
        "name": "accuracy",
        "value": 0.9,
        "threshold": 0.8,
        "comparison": ">=",
        "verdict": "pass",
        "detail": "test accuracy 0.9 >= 0.8",
    }


def paired(n: int, both_right: int, candidate_only: int, champion_only: int) -> ChampionScore:
    """A champion comparison on n images with the given agreement pattern (the rest: both wrong)."""
    candidate = np.zeros(n, bool)
    champion = np.zeros(n, bool)
    candidate[:both_right] = champion[:both_right] = True
    candidate[both_right : both_right + candidate_only] = True
    champion[both_right + candidate_only : both_right + candidate_only + champion_only] = True
    return ChampionScore.from_comparison("m:1", compare_paired(candidate, champion))


def regression_check(decision: dict) -> dict:
    return next(c for c in decision["checks"] if c["name"] == "no_regression_vs_champion_accuracy")


def test_a_significantly_worse_candidate_is_rejected_with_its_p_value():
    # 600 test images; the candidate loses 20 the champion gets right and wins back 5: 0.895 vs 0.92
    score = paired(600, 532, 5, 20)
    decision = evaluate_gate(metrics(score.candidate_value), EXPORT_REPORT, GateParams(), score, "", SAME_CLASSES)
    check = regression_check(decision)
    assert check["verdict"] == "fail" and not decision["passed"]
    assert check["value"] == pytest.approx(mcnemar_exact_p(5, 20, "candidate_worse")) and check["value"] < 0.05
    assert check["threshold"] == 0.05
    assert "5 right only by the candidate, 20 only by the champion" in check["detail"]
    assert "no_regression_vs_champion_accuracy failed" in decision["reason"]
    recorded = decision["champion"]
    assert (recorded["candidate_only_correct"], recorded["champion_only_correct"]) == (5, 20)
    assert recorded["champion_value"] == pytest.approx(552 / 600) and recorded["candidate_value"] == pytest.approx(
        537 / 600
    )
    assert recorded["alpha"] == 0.05 and recorded["p_value"] == check["value"]


def test_a_candidate_slightly_worse_by_noise_passes():
    """A point lower on 600 images (seed-to-seed spread) is not evidence of a regression: the old
    tolerance of 0.005 rejected this candidate, the paired test does not."""
    score = paired(600, 520, 10, 16)
    assert score.champion_value - score.candidate_value == pytest.approx(0.01)
    decision = evaluate_gate(metrics(score.candidate_value), EXPORT_REPORT, GateParams(), score, "", SAME_CLASSES)
    check = regression_check(decision)
    assert check["verdict"] == "pass" and decision["passed"]
    assert check["value"] == pytest.approx(mcnemar_exact_p(10, 16, "candidate_worse")) and check["value"] > 0.05


def test_alpha_sets_how_much_evidence_rejects():
    score = paired(600, 520, 10, 22)  # one-sided p ~ 0.025
    strict = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(regression_alpha=0.05), score, "", SAME_CLASSES)
    lenient = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(regression_alpha=0.01), score, "", SAME_CLASSES)
    assert regression_check(strict)["verdict"] == "fail" and regression_check(lenient)["verdict"] == "pass"


def test_a_better_candidate_passes_however_large_the_difference():
    score = paired(600, 500, 60, 2)
    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), score, "", SAME_CLASSES)
    assert regression_check(decision)["verdict"] == "pass" and regression_check(decision)["value"] == pytest.approx(1.0)


def test_a_class_change_is_rejected_and_named_unless_allowed():
    change = ClassChange.between("m:1", ["cat", "dog", "fox"], ["cat", "dog", "owl", "yak"])
    note = "champion m:1 predicts other classes (see class_set): no paired comparison"
    rejected = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None, note, change)
    check = next(c for c in rejected["checks"] if c["name"] == "class_set")
    assert check["verdict"] == "fail" and not rejected["passed"]
    assert "added owl, yak; removed fox" in check["detail"] and "gate.allow_class_change" in check["detail"]
    assert "class_set failed" in rejected["reason"]
    assert rejected["class_set"] == {
        "champion_tag": "m:1",
        "added": ["owl", "yak"],
        "removed": ["fox"],
        "allowed": False,
    }
    assert regression_check(rejected)["verdict"] == "n/a"

    allowed = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(allow_class_change=True), None, note, change)
    check = next(c for c in allowed["checks"] if c["name"] == "class_set")
    assert check["verdict"] == "pass" and allowed["passed"] and "allowed by gate.allow_class_change" in check["detail"]
    assert allowed["class_set"]["allowed"] is True and allowed["class_set"]["added"] == ["owl", "yak"]


def test_the_same_classes_in_another_order_are_not_a_change():
    change = ClassChange.between("m:1", ["dog", "cat"], ["cat", "dog"])
    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None, "", change)
    check = next(c for c in decision["checks"] if c["name"] == "class_set")
    assert check["verdict"] == "pass" and decision["class_set"]["added"] == [] == decision["class_set"]["removed"]


def test_each_budget_can_reject():
    report = {**EXPORT_REPORT, "parity": [{"batch_size": 32, "max_abs_diff": 0.3, "top1_agreement": 0.97}]}
    report["latency"] = {"p95_ms": 80.0}
    report["model_bytes"] = 80_000_000
    decision = evaluate_gate(metrics(0.5, 0.5, 0.1), report, GateParams(), None)
    failed = {c["name"] for c in decision["checks"] if c["verdict"] == "fail"}
    assert failed == {
        "accuracy",
        "macro_f1",
        "min_class_recall",
        "onnx_max_logit_diff",
        "onnx_top1_agreement",
        "latency_p95_ms",
        "model_size_mb",
    }
    assert not decision["passed"] and decision["reason"].startswith("rejected: accuracy failed")


def test_the_report_lines_give_both_accuracies_the_discordant_counts_the_p_value_and_alpha():
    from transferline.evaluation.model_card import champion_lines

    score = paired(600, 532, 5, 20)
    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), score, "", SAME_CLASSES)
    text = "\n".join(champion_lines(decision))
    assert "accuracy on the same 600 test images: candidate 0.895, champion 0.92" in text
    assert "right only by the candidate: 5 images; only by the champion: 20" in text
    assert f"p = {score.p_value:.4g}, alpha = 0.05 (worse beyond chance: rejected)" in text
    first = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None, "no champion is deployed yet")
    assert champion_lines(first) == ["- no champion was serving: nothing to compare against"]


def test_the_checks_table_shows_a_threshold_only_where_there_is_one():
    from transferline.evaluation.model_card import checks_table

    change = ClassChange.between("m:1", ["a", "b"], ["a", "c"])
    rows = checks_table(evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None, "n/a here", change))
    assert "| class_set | n/a | n/a | fail |" in rows and "| accuracy | 0.9 | >= 0.8 | pass |" in rows


@pytest.mark.parametrize(
    ("by_set", "checked", "verdict", "value"),
    [
        ({"noise": 0.97, "photos": 0.3}, ("noise",), "pass", 0.97),
        ({"noise": 0.97, "photos": 0.3}, ("noise", "photos"), "fail", 0.3),
        ({"noise": 0.55}, ("noise",), "fail", 0.55),
        ({"photos": 0.9}, ("noise",), "n/a", None),
        (None, ("noise",), "n/a", None),
    ],
)
def test_the_gate_checks_the_ood_flag_on_the_sets_it_names(by_set, checked, verdict, value):
    from transferline.config import GateParams
    from transferline.evaluation.gate import ood_check

    ood = {"far_auroc_by_set": by_set} if by_set is not None else None
    check = ood_check(ood, GateParams(min_ood_auroc=0.8, ood_check_sets=checked))
    assert check.name == "ood_auroc" and check.verdict == verdict and check.value == value


def test_model_card_shows_where_and_how_the_model_was_trained():
    from transferline.evaluation.model_card import render_model_card
    from transferline.model.reproducibility import pinning
    from transferline.model.run_environment import training_environment

    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None)
    record = {
        "model_sha256": "ab" * 32,
        "environment": training_environment(pinning(True, 2), "cpu"),
        "wall_seconds": 12.5,
        "resumed_from_epoch": 0,
    }
    card = render_model_card({"backbone": "mobilenet_v2"}, metrics(), EXPORT_REPORT, decision, {}, record)
    section = card.split("## Training environment")[1].split("##")[0]
    assert f"model.pt sha256: `{'ab' * 32}`" in section
    assert record["environment"]["cpu"]["model"] in section and "threads: " in section
    assert "asked for, but the process was not started pinned" in section  # this test process has no caps
    assert "torch " in section and "oneDNN " in section
    assert "- processes: 1" in section
    unknown = render_model_card({}, metrics(), EXPORT_REPORT, decision, {}, None)
    assert "No run record: the training machine is unknown." in unknown
    shared = {"processes": 2, "processes_per_machine": 2, "backend": "gloo", "images_per_process_per_step": 32}
    record["distributed"] = {**shared, "batchnorm": "statistics of the global batch"}
    card = render_model_card({"backbone": "mobilenet_v2"}, metrics(), EXPORT_REPORT, decision, {}, record)
    assert "- processes: 2 (2 per machine, gloo), 32 images per process per step; BatchNorm: statistics of" in card


def test_model_card_and_run_report_say_why_auto_chose_the_recipe():
    from flows.report import run_report_markdown
    from transferline.evaluation.model_card import render_model_card
    from transferline.model.advisor import Signals, decide

    rule = {
        "tree": {
            "signal": "images_per_class",
            "threshold": 50,
            "le": {"recipe": "feature_extraction", "gain_over_probe": [0.0, 0.0], "cells": 3},
            "gt": {"recipe": "full", "gain_over_probe": [0.02, 0.08], "cells": 4},
        },
        "recipes": {"feature_extraction": {"strategy": "feature_extraction"}, "full": {"strategy": "full"}},
    }
    signals = Signals(400, 10, 0.81, 0.78, 1.2)  # no pretrained gain: this rule does not read it
    advice = decide(signals, rule, 18, 4000, {"full": 0.01, "feature_extraction": 0.001}, None).to_dict()
    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None)
    card = render_model_card({"strategy": "full", "advice": advice}, metrics(), EXPORT_REPORT, decision, {}, None)
    section = card.split("## How the recipe was chosen")[1].split("\n## ")[0]
    assert "chose **full**: images_per_class 400 > 50" in section
    assert "expected test accuracy 0.83-0.89" in section and "estimated 400 s" in section
    assert "probe_accuracy 0.81" in section and "strategy=full" in section
    assert "pretrained_gain not measured (the rule does not read it)" in section
    assert "(chosen by `strategy: auto`, see below)" in card
    plain = render_model_card({"strategy": "full"}, metrics(), EXPORT_REPORT, decision, {}, None)
    assert "How the recipe was chosen" not in plain and "chosen by" not in plain
    report = run_report_markdown([], metrics(), decision, "deployed x", advice=advice)
    assert "chose **full**: images_per_class 400 > 50" in report
    assert "How the recipe was chosen" not in run_report_markdown([], metrics(), decision, "deployed x")


def test_model_card_lists_the_backbones_auto_compared():
    from transferline.evaluation.model_card import render_model_card

    choice = {
        "chosen": "efficientnet_lite0",
        "compared_on": "the linear probe's validation accuracy",
        "candidates": [
            {"backbone": b, "expected_accuracy": a, "recipe": None, "signals": {"probe_accuracy": a, "logme": 0.4}}
            for b, a in (("mobilenet_v2", 0.8), ("efficientnet_lite0", 0.85))
        ],
    }
    decision = evaluate_gate(metrics(), EXPORT_REPORT, GateParams(), None)
    card = render_model_card({"advice": {"backbone_choice": choice}}, metrics(), EXPORT_REPORT, decision, {}, None)
    section = card.split("## How the recipe was chosen")[1].split("\n## ")[0]
    assert "`backbone: auto` chose **efficientnet_lite0**, compared on the linear probe's" in section
    assert "| mobilenet_v2 | 0.8 | as set | 0.8 |" in section and "strategy: auto" not in section
