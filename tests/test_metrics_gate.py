"""Pure metric and gate logic."""

import numpy as np
import pytest

from transferline.config import GateParams
from transferline.evaluation.gate import ChampionScore, evaluate_gate
from transferline.evaluation.metrics import classification_report, expected_calibration_error, softmax

EXPORT_REPORT = {
    "parity": [{"batch_size": 1, "max_abs_diff": 2e-6, "top1_agreement": 1.0}],
    "latency": {"p95_ms": 3.0},
    "model_bytes": 9_000_000,
}


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
    assert by_name["accuracy"] == {
        "name": "accuracy",
        "value": 0.9,
        "threshold": 0.8,
        "comparison": ">=",
        "verdict": "pass",
        "detail": "test accuracy 0.9 >= 0.8",
    }


@pytest.mark.parametrize(
    ("candidate", "champion", "verdict"),
    [(0.900, 0.903, "pass"), (0.900, 0.910, "fail"), (0.95, 0.90, "pass")],
)
def test_champion_tolerance(candidate, champion, verdict):
    score = ChampionScore("m:1", champion_value=champion, candidate_value=candidate, n_images=100)
    decision = evaluate_gate(metrics(candidate), EXPORT_REPORT, GateParams(champion_tolerance=0.005), score)
    check = next(c for c in decision["checks"] if c["name"] == "no_regression_vs_champion_accuracy")
    assert check["verdict"] == verdict and decision["passed"] == (verdict == "pass")


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
    unknown = render_model_card({}, metrics(), EXPORT_REPORT, decision, {}, None)
    assert "No run record: the training machine is unknown." in unknown
