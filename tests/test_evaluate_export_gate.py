"""Evaluate, export and gate stages on a small real model and real ONNX Runtime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from stages import evaluate, export, gate, prepare
from tests.model_fixtures import degrade, fit_tiny_model
from transferline.config import EvaluateParams, ExportParams, GateParams, PrepareParams, PreprocessParams
from transferline.data.manifest import split_rows
from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.evaluation import gallery
from transferline.evaluation.onnx_classifier import DISTANCE_NAME, OUTPUT_NAME, has_distance, softmax
from transferline.evaluation.onnx_export import check_parity, cpu_session, run_batches
from transferline.evaluation.scoring import torch_logits

PREPROCESS = PreprocessParams(image_size=32)
SPEC = PreprocessSpec.from_params(PREPROCESS)
LOOSE_GATE = GateParams(min_accuracy=0.9, min_macro_f1=0.9, min_class_recall=0.8, max_latency_ms=500)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, request):
    """Prepared data (3 colour classes) and a model fitted on its training split."""
    from tests.conftest import class_image, png_bytes

    root = tmp_path_factory.mktemp("ws")
    raw = root / "data" / "raw"
    for label_index, name in enumerate(("cat", "dog", "fox")):
        (raw / name).mkdir(parents=True)
        for item in range(30):
            (raw / name / f"img_{item:03d}.png").write_bytes(png_bytes(class_image(label_index, item)))
    prepare.run(PrepareParams(min_per_class=3), PREPROCESS, raw, root / "data" / "prepared", root / "m.json", workers=1)
    cache = root / "data" / "prepared" / "cache"
    model = fit_tiny_model(np.load(cache / "train_images.npy"), np.load(cache / "train_labels.npy"), SPEC)
    (root / "models").mkdir()
    (root / "models" / "model.json").write_text(
        json.dumps({"backbone": "tiny", "strategy": "full", "classes": ["cat", "dog", "fox"], "params": {}})
    )
    return root, model


def run_candidate(root: Path, model, name: str, gate_params: GateParams, champion=None) -> dict:
    """evaluate -> export -> gate for one candidate, into its own directories."""
    classes = ["cat", "dog", "fox"]
    prepared = root / "data" / "prepared"
    metrics_file = root / name / "metrics.json"
    evaluate.run(EvaluateParams(), model, classes, SPEC, prepared, metrics_file, root / name / "plots")
    export_dir = root / name / "export"
    export_metrics = root / name / "export-metrics.json"
    export.run(
        ExportParams(parity_images=40, latency_seconds=0.2, int8=False),
        model,
        classes,
        SPEC,
        prepared,
        export_dir,
        export_metrics,
    )
    return gate.run(
        gate_params,
        lambda: champion,
        export_dir,
        root / name / "gate",
        metrics_file,
        root / "models" / "model.json",
        prepared,
        root / "data" / "raw",
        root,
        export_metrics,
    )


def test_evaluate_writes_metrics_and_plots(workspace, tmp_path):
    root, model = workspace
    report = evaluate.run(
        EvaluateParams(top_k=2),
        model,
        ["cat", "dog", "fox"],
        SPEC,
        root / "data" / "prepared",
        tmp_path / "metrics.json",
        tmp_path / "plots",
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == report["accuracy"] >= 0.9
    assert saved["top_k"] == 2 and saved["top_k_accuracy"] >= saved["accuracy"]
    assert set(saved["per_class"]) == {"cat", "dog", "fox"}
    assert 0 <= saved["ece"] <= 1 and saved["log_loss"] > 0 and saved["roc_auc_ovr"] > 0.9
    confusion = (tmp_path / "plots" / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + saved["n"]
    assert (tmp_path / "plots" / "calibration.csv").read_text().startswith("confidence,accuracy,count")
    listing = json.loads((tmp_path / "plots" / "confident_errors.json").read_text())
    wrong = sum(1 for row in confusion[1:] if row.split(",")[0] != row.split(",")[1])
    assert listing["test_images"] == saved["n"] and listing["errors"] == wrong
    assert listing["shown"] == min(wrong, EvaluateParams().gallery_size) == len(listing["images"])
    with Image.open(tmp_path / "plots" / "confident_errors.png") as png:
        assert png.format == "PNG"
        png.verify()


def test_gallery_shows_the_most_confidently_misclassified_test_images(workspace, tmp_path):
    """On a broken model: every listed image is a real test image that evaluate's own predictions
    (confusion.csv, in test-split order) got wrong, ranked by confidence, and its thumbnail is that image."""
    root, model = workspace
    prepared = root / "data" / "prepared"
    cache = prepared / "cache"
    broken = degrade(model, np.load(cache / "train_images.npy"), np.load(cache / "train_labels.npy"), SPEC)
    classes = ["cat", "dog", "fox"]
    plots = tmp_path / "plots"
    evaluate.run(EvaluateParams(gallery_size=5), broken, classes, SPEC, prepared, tmp_path / "m.json", plots)
    listing = json.loads((plots / "confident_errors.json").read_text())
    confusion = [row.split(",") for row in (plots / "confusion.csv").read_text().splitlines()[1:]]
    assert listing["errors"] == sum(a != p for a, p in confusion) >= 5 and listing["shown"] == 5

    test_rows = split_rows(prepared, "test")
    images = np.load(cache / "test_images.npy")
    probs = softmax(torch_logits(broken, images, SPEC, 16).astype(np.float64))
    all_wrong_confidences = sorted((probs[i].max() for i, (a, p) in enumerate(confusion) if a != p), reverse=True)
    for shown in listing["images"]:
        i = shown["test_index"]
        assert shown["path"] == test_rows[i].path and (root / "data" / "raw" / shown["path"]).is_file()
        assert [shown["actual"], shown["predicted"]] == confusion[i] and shown["actual"] != shown["predicted"]
        assert shown["actual"] == test_rows[i].label
        assert shown["confidence"] == pytest.approx(probs[i].max(), abs=1e-6)
        assert shown["actual_probability"] == pytest.approx(probs[i, classes.index(shown["actual"])], abs=1e-6)
    confidences = [shown["confidence"] for shown in listing["images"]]
    assert confidences == pytest.approx(all_wrong_confidences[:5], abs=1e-6)

    with Image.open(plots / "confident_errors.png") as png:
        assert png.format == "PNG"
        sheet = np.asarray(png.convert("RGB"))
    x, y = gallery.PAD, gallery.HEADER  # the first thumbnail: the most confident mistake
    first = np.asarray(gallery._thumbnail(images[listing["images"][0]["test_index"]]))
    np.testing.assert_array_equal(sheet[y : y + gallery.THUMB, x : x + gallery.THUMB], first)


def test_gallery_without_errors_is_still_a_png_that_says_so():
    data = gallery.render(np.zeros((4, 32, 32, 3), np.uint8), [], 0, 4)
    with Image.open(io.BytesIO(data)) as png:
        assert png.format == "PNG" and png.width >= 320
        pixels = np.asarray(png.convert("L"))
    assert (pixels < 128).any()  # the message is drawn, not a blank sheet


def test_exported_file_has_a_dynamic_batch_and_matches_pytorch(workspace, tmp_path):
    root, model = workspace
    export_dir = tmp_path / "export"
    report = export.run(
        ExportParams(parity_images=40, latency_seconds=0.2, int8=True, int8_calibration_images=16),
        model,
        ["cat", "dog", "fox"],
        SPEC,
        root / "data" / "prepared",
        export_dir,
        tmp_path / "export-metrics.json",
    )
    assert sorted(p.name for p in export_dir.iterdir() if "int8" not in p.name) == [
        "classes.json",
        "export_report.json",
        "model.onnx",
        "monitoring.json",
        "preprocess.json",
        "reference_distances.npy",
        "reference_logits.npy",
    ]  # one self-contained file: no stray .onnx.data
    # latency is measured, so it lives in the metrics file, never in export/ (whose hash must not vary)
    measured = json.loads((tmp_path / "export-metrics.json").read_text())
    assert measured["latency"]["p95_ms"] > 0 and report["latency"] == measured["latency"]
    assert "latency" not in json.loads((export_dir / "export_report.json").read_text())
    project_root = str(Path(__file__).resolve().parents[1]).encode()
    assert project_root not in (export_dir / "model.onnx").read_bytes()  # no source paths: same bytes anywhere
    assert report["opset"] >= 17 and report["batch_axis"]
    assert all(p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0 for p in report["parity"])
    session = cpu_session(export_dir / "model.onnx")
    rng = np.random.default_rng(0)
    for batch in (1, 7, 64):
        images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        onnx_logits = run_batches(session, normalize(images, SPEC), batch)
        assert onnx_logits.shape == (batch, 3)
        np.testing.assert_allclose(onnx_logits, torch_logits(model, images, SPEC, batch), atol=1e-4)
        distances = run_batches(session, normalize(images, SPEC), batch, DISTANCE_NAME)
        assert distances.shape == (batch,) and np.all(np.isfinite(distances))
    # export.ood_layers' default depths on two blocks: the first block's pooled output, then the head's features
    layers = report["feature_distance"]["layers"]
    assert [(layer["block"], layer["features"]) for layer in layers] == [("conv1", 8), ("head features", 16)]
    assert report["feature_distance"]["max_relative_diff"] < 1e-3
    int8 = report["int8"]
    assert int8["kept"] == (export_dir / "model.int8.onnx").exists()
    # the INT8 variant is the classifier alone: its quantized features would move the calibrated distance
    assert int8["outputs"] == [OUTPUT_NAME]
    if int8["kept"]:
        assert not has_distance(cpu_session(export_dir / "model.int8.onnx"))
    assert int8["kept"] == (int8["accuracy_drop"] <= 0.01)


def test_export_calibrates_the_ood_flag_and_scores_it_on_foreign_images(workspace, tmp_path):
    """Calibrated on val to the stated rejection rate, checked against noise and a folder of real photos
    (classes the model never saw), stored with the drift reference; the same model exports the same bytes."""
    from tests.serving.images import accepted_images

    root, model = workspace
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name, data in accepted_images().items():
        (foreign / name).write_bytes(data)
    (foreign / "broken.png").write_bytes(b"not an image")
    params = ExportParams(parity_images=40, latency_seconds=0.1, int8=False, ood_dir=foreign, ood_rejection_rate=0.1)
    outputs = []
    for run_dir in ("a", "b"):
        report = export.run(
            params,
            model,
            ["cat", "dog", "fox"],
            SPEC,
            root / "data" / "prepared",
            tmp_path / run_dir,
            tmp_path / "m.json",
        )
        outputs.append(tmp_path / run_dir)
    monitoring = json.loads((outputs[0] / "monitoring.json").read_text())
    detector = monitoring["detector"]
    val_images = len(np.load(root / "data" / "prepared" / "cache" / "val_labels.npy"))
    assert detector["calibration_images"] == val_images and detector["measured_rejection_rate"] <= 0.1
    reference = np.load(outputs[0] / "reference_logits.npy")
    assert reference.shape == (val_images, 3)
    assert detector["method"] == "mahalanobis"  # the default: the model's own feature distance
    distances = np.load(outputs[0] / "reference_distances.npy")
    assert distances.shape == (val_images,) and np.mean(distances > detector["threshold"]) <= 0.1
    shares = monitoring["drift_reference"]["class_shares"]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    checks = monitoring["checks"]
    assert set(checks["near"]["sets"]) == {"blur", "brightness", "rotation", "noise"}
    assert set(checks["far"]["sets"]) == {"noise", str(foreign)}
    assert checks["far"]["sets"][str(foreign)]["images"] == len(accepted_images())
    assert monitoring["skipped_ood_files"] == ["broken.png"]
    assert 0 <= report["ood"]["far_auroc"] <= 1 and report["ood"]["far_auroc"] == checks["far"]["auroc"]
    for name in (
        "monitoring.json",
        "reference_logits.npy",
        "reference_distances.npy",
        "export_report.json",
        "model.onnx",
    ):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name


def test_tampered_onnx_fails_parity(workspace, tmp_path):
    root, model = workspace
    export_dir = tmp_path / "export"
    export.run(
        ExportParams(parity_images=40, latency_seconds=0.2, int8=False),
        model,
        ["cat", "dog", "fox"],
        SPEC,
        root / "data" / "prepared",
        export_dir,
        tmp_path / "export-metrics.json",
    )
    proto = onnx.load(str(export_dir / "model.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    images = np.load(root / "data" / "prepared" / "cache" / "test_images.npy")
    reference = torch_logits(model, images, SPEC, 16)
    parity = check_parity(reference, cpu_session(tmp_path / "tampered.onnx"), normalize(images, SPEC), 16)
    assert parity.max_abs_diff > GateParams().max_logit_diff  # the gate's default threshold catches it


def test_good_candidate_passes_and_degraded_one_is_rejected(workspace):
    from serving.registry import Champion

    root, model = workspace
    good = run_candidate(root, model, "good", LOOSE_GATE)
    assert good["passed"], good["reason"]
    champion_check = next(c for c in good["checks"] if c["name"].startswith("no_regression"))
    assert champion_check["verdict"] == "n/a" and "first model" in champion_check["detail"]
    assert (root / "good" / "gate" / "model_card.md").read_text().startswith("# Model card")

    export_dir = root / "good" / "export"
    champion = Champion(
        tag="transferline-classifier:good",
        path=export_dir,
        classes=["cat", "dog", "fox"],
        preprocess=SPEC,
        metadata={},
    )
    cache = root / "data" / "prepared" / "cache"
    broken = degrade(model, np.load(cache / "train_images.npy"), np.load(cache / "train_labels.npy"), SPEC)
    bad = run_candidate(root, broken, "bad", LOOSE_GATE, champion)
    saved = json.loads((root / "bad" / "gate" / "decision.json").read_text())
    assert saved == bad and not bad["passed"]
    verdicts = {c["name"]: c["verdict"] for c in bad["checks"]}
    assert verdicts["accuracy"] == "fail" and verdicts["no_regression_vs_champion_accuracy"] == "fail"
    assert "accuracy failed" in bad["reason"] and "vs champion transferline-classifier:good" in bad["reason"]
    assert bad["champion"]["champion_value"] >= 0.9 > bad["champion"]["candidate_value"]
    recorded = bad["champion"]
    n_test = json.loads((root / "bad" / "metrics.json").read_text())["n"]
    assert recorded["n_images"] == n_test and recorded["alpha"] == LOOSE_GATE.regression_alpha
    discordance = recorded["champion_only_correct"] - recorded["candidate_only_correct"]
    assert discordance == round((recorded["champion_value"] - recorded["candidate_value"]) * n_test)
    assert recorded["p_value"] < LOOSE_GATE.regression_alpha
    assert verdicts["class_set"] == "pass"
    card = (root / "bad" / "gate" / "model_card.md").read_text()
    assert "| no_regression_vs_champion_accuracy |" in card and "| class_set |" in card
    assert f"right only by the candidate: {recorded['candidate_only_correct']} images" in card
    assert f"alpha = {LOOSE_GATE.regression_alpha:g} (worse beyond chance: rejected)" in card


def test_a_champion_with_other_classes_is_a_named_rejection_unless_allowed(workspace):
    from serving.registry import Champion

    root, model = workspace
    export_dir = root / "good" / "export"
    if not export_dir.is_dir():
        run_candidate(root, model, "good", LOOSE_GATE)
    champion = Champion("transferline-classifier:old", export_dir, ["cat", "dog", "owl"], SPEC, {})
    rejected = run_candidate(root, model, "renamed", LOOSE_GATE, champion)
    verdicts = {c["name"]: c["verdict"] for c in rejected["checks"]}
    assert verdicts["class_set"] == "fail" and verdicts["no_regression_vs_champion_accuracy"] == "n/a"
    assert (
        "class_set failed (classes differ from champion transferline-classifier:old: added fox; removed owl"
        in (rejected["reason"])
    )
    assert rejected["class_set"] == {
        "champion_tag": "transferline-classifier:old",
        "added": ["fox"],
        "removed": ["owl"],
        "allowed": False,
    }
    card = (root / "renamed" / "gate" / "model_card.md").read_text()
    assert "added fox, removed owl; not allowed (gate.allow_class_change: false)" in card
    allowed = run_candidate(
        root, model, "renamed", LOOSE_GATE.model_copy(update={"allow_class_change": True}), champion
    )
    assert allowed["passed"], allowed["reason"]
    assert allowed["class_set"]["allowed"] is True and allowed["class_set"]["added"] == ["fox"]


def test_fail_on_reject_exits_after_writing_the_decision(workspace):
    root, model = workspace
    strict = GateParams(max_latency_ms=0.001, fail_on_reject=True)
    with pytest.raises(gate.GateRejected, match=r"gate rejected the candidate.*latency_p95_ms failed"):
        run_candidate(root, model, "strict", strict)
    decision = json.loads((root / "strict" / "gate" / "decision.json").read_text())
    assert decision["passed"] is False


def test_foreign_images_over_the_limit_are_spread_over_every_kind(tmp_path):
    """200 of 202 solar cells and 17 photos must not mean 200 solar cells: the pick spans the sorted names."""
    for name in [*(f"cell-{i:03d}" for i in range(12)), "photo-a", "photo-b", "photo-c"]:
        Image.fromarray(np.full((40, 40, 3), len(name), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    pixels, skipped = export.foreign_pixels(tmp_path, SPEC, 6)
    assert len(pixels) + len(skipped) == 6 and skipped == ["broken.png"]  # sorted first, so picked first
    assert {int(image[0, 0, 0]) for image in pixels} == {len("cell-000"), len("photo-a")}  # both kinds
    everything, _ = export.foreign_pixels(tmp_path, SPEC, 100)
    assert len(everything) == 15
