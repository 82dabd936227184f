"""Each strategy trains a few real steps on tiny data, and exactly the right parameters (and BN statistics) move."""

from __future__ import annotations

import json

import pytest
import torch

from stages import train as train_stage
from transferline.config import TrainParams
from transferline.data.preprocessing import PreprocessSpec
from transferline.model.backbones import build_model
from transferline.model.checkpoints import CheckpointStore
from transferline.model.distributed import SINGLE
from transferline.model.strategies import make_plan, optimizer_param_groups
from transferline.model.training import build_optimizer, fit, resolve_runtime


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BN running stats included), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def block_of(model) -> dict[str, str]:
    """state-dict key -> block name ('head' for the head)."""
    owner, prefix_of = {}, {}
    for block_name, modules in model.blocks():
        for module in modules:
            prefix = next(name for name, m in model.named_modules() if m is module)
            prefix_of[prefix + "."] = block_name
    for key in model.state_dict():
        owner[key] = "head" if key.startswith("head.") else next(b for p, b in prefix_of.items() if key.startswith(p))
    return owner


def train_in_process(prepared, tmp_path, params: TrainParams):
    """The stage's own pieces: build, plan, fit; returns (model before, model after, plan, result)."""
    dataset = json.loads((prepared / "dataset.json").read_text())
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    torch.manual_seed(params.seed)
    model, _ = build_model(params.backbone, len(dataset["classes"]), params.pretrained)
    before = snapshot(model)
    plan = make_plan(model, params)
    train = train_stage.load_split(prepared, "train", 3, spec.image_size)
    val = train_stage.load_split(prepared, "val", 3, spec.image_size)
    store = CheckpointStore(tmp_path / "ckpt", "digest")
    result = fit(model, plan, train, val, spec, params, resolve_runtime(params), store)
    return model, before, snapshot(model), plan, result


def changed_keys(before, after, owner, block_names, kind="weight") -> dict[str, bool]:
    """For each block: did any of its `kind` tensors change?"""
    out = {}
    for block in block_names:
        keys = [k for k in before if owner[k] == block and k.endswith(kind)]
        assert keys, f"{block} has no {kind} tensors"
        out[block] = any(not torch.equal(before[k], after[k]) for k in keys)
    return out


@pytest.mark.parametrize("frozen_blocks", [10, 19])
def test_partial_freezes_the_first_blocks_bit_for_bit_including_bn_stats(
    prepared, tmp_path, tiny_params, frozen_blocks
):
    params = tiny_params(strategy="partial", frozen_blocks=frozen_blocks, epochs=1, warmup_epochs=0)
    model, before, after, _, result = train_in_process(prepared, tmp_path, params)
    owner = block_of(model)
    names = [b for b, _ in model.blocks()]
    frozen, trained = names[:frozen_blocks], names[frozen_blocks:]
    for key, value in before.items():
        if owner[key] in frozen:
            assert torch.equal(value, after[key]), f"frozen {key} changed"
    assert not torch.equal(before["head.weight"], after["head.weight"])
    if trained:
        assert all(changed_keys(before, after, owner, trained).values())
        # BN running statistics of the trained blocks do update (their BN is in train mode)
        assert all(changed_keys(before, after, owner, trained, "running_mean").values())
    assert result.history[0]["epoch"] == 1


def test_full_moves_every_block(prepared, tmp_path, tiny_params):
    params = tiny_params(strategy="full", epochs=1, warmup_epochs=0)
    model, before, after, _, _ = train_in_process(prepared, tmp_path, params)
    names = [b for b, _ in model.blocks()]
    moved = changed_keys(before, after, block_of(model), [*names, "head"])
    assert all(moved.values()), moved


def test_feature_extraction_keeps_the_body_and_fits_the_head(run_train, tmp_path, tiny_params):
    params = tiny_params(strategy="feature_extraction")
    torch.manual_seed(params.seed)
    reference, _ = build_model("mobilenet_v2", 3, pretrained=True)
    metrics = run_train(params)
    from transferline.model.trained_model import load_trained_model

    model, meta = load_trained_model(tmp_path / "out" / "models")
    for key, value in reference.body.state_dict().items():
        assert torch.equal(value, model.body.state_dict()[key]), f"body {key} changed"
    assert not torch.equal(reference.head.weight, model.head.weight)
    assert meta["strategy"] == "feature_extraction" and metrics["val_accuracy"] >= 0.8
    probe = meta["training"]["probe"]
    best_trial = next(t for t in probe["trials"] if t["l2"] == probe["l2"])
    # the assembled model (standardisation folded into the head) scores what the probe scored
    assert metrics["val_accuracy"] == pytest.approx(best_trial["val_accuracy"], abs=1e-6)
    assert (tmp_path / "out" / "features" / "train.npy").is_file()


def test_the_feature_extraction_head_reads_the_probe_layers_side_by_side_and_reloads_as_trained(
    run_train, tmp_path, tiny_params
):
    from transferline.model.trained_model import load_trained_model

    run_train(tiny_params(strategy="feature_extraction"))  # probe_layers as params.yaml sets them
    model, meta = load_trained_model(tmp_path / "out" / "models")
    assert meta["feature_layers"] == [0.25, 0.5, 0.75, 1.0]
    assert model.taps == ("features.4", "features.9", "features.14", None)  # of MobileNetV2's 19 blocks
    assert model.tap_widths == (32, 64, 160, 1280) and model.head.in_features == sum(model.tap_widths)
    size = meta["preprocess"]["image_size"]
    pixels = torch.randn(4, 3, size, size)
    with torch.no_grad():
        logits = model(pixels)
        model.head.weight[:, :32] = 0  # the earliest tap's weights count in the answer
        assert not torch.allclose(logits, model(pixels))

    run_train(tiny_params(strategy="feature_extraction", probe_layers=(1.0,)))  # the last layer alone
    model, meta = load_trained_model(tmp_path / "out" / "models")
    assert "feature_layers" not in meta and model.taps == (None,) and model.head.in_features == 1280


def test_probe_layers_must_end_at_the_body_output(tiny_params):
    for wrong in ((0.5,), (0.75, 0.25, 1.0), (0.0, 1.0), ()):
        with pytest.raises(ValueError, match=r"ending with 1\.0"):
            tiny_params(probe_layers=wrong)


def test_discriminative_lrs_decay_toward_the_input(tiny_params):
    torch.manual_seed(0)
    model, _ = build_model("mobilenet_v2", 3, pretrained=False)
    params = tiny_params(strategy="discriminative", lr=1e-2, lr_decay=0.5, layer_groups=4, frozen_blocks=3)
    plan = make_plan(model, params)
    optimizer = build_optimizer(plan, params)
    per_group = {}
    for group in optimizer.param_groups:
        per_group.setdefault(group["layer_group"], set()).add(group["lr"])
    assert all(len(lrs) == 1 for lrs in per_group.values())
    lrs = [per_group[i].pop() for i in sorted(per_group)]  # input -> output
    assert lrs == pytest.approx([1e-2 * 0.5**k for k in (4, 3, 2, 1, 0)])
    assert plan.groups[0].name.startswith("frozen:") and plan.groups[-1].name == "head"
    body_groups = [g for g in plan.trained_groups() if g.name != "head"]
    assert sum(len(g.modules) for g in body_groups) == 19 - 3
    # no weight decay on biases and norm weights
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups if g["name"].endswith(":no_decay"))
    assert len(optimizer_param_groups(plan, 0.05)) == 10


def test_discriminative_trains_with_smaller_steps_near_the_input(prepared, tmp_path, tiny_params):
    params = tiny_params(strategy="discriminative", lr=1e-3, lr_decay=0.1, layer_groups=3, epochs=1, warmup_epochs=0)
    model, before, after, _, _ = train_in_process(prepared, tmp_path, params)
    owner = block_of(model)

    def mean_step(block):
        keys = [k for k in before if owner[k] == block and k.endswith("weight") and before[k].ndim > 1]
        return sum((after[k] - before[k]).abs().mean().item() for k in keys) / len(keys)

    assert mean_step("features.1") < mean_step("features.17") < mean_step("head")


def test_gradual_unfreezing_trains_the_head_first_then_one_group_per_epoch(prepared, tmp_path, tiny_params):
    params = tiny_params(strategy="discriminative", layer_groups=2, gradual_unfreeze=True, epochs=2, warmup_epochs=0)
    dataset = json.loads((prepared / "dataset.json").read_text())
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    torch.manual_seed(0)
    model, _ = build_model("mobilenet_v2", 3, pretrained=True)
    plan = make_plan(model, params)
    assert [g.trainable_from for g in plan.groups] == [2, 1, 0]
    train = train_stage.load_split(prepared, "train", 3, spec.image_size)
    val = train_stage.load_split(prepared, "val", 3, spec.image_size)
    store = CheckpointStore(tmp_path / "ckpt", "d")
    runtime = resolve_runtime(params)
    owner = block_of(model)
    lower = [b for b, _ in model.blocks()][:10]  # the first of the two groups
    upper = [b for b, _ in model.blocks()][10:]

    before = snapshot(model)
    fit(model, plan, train, val, spec, params, runtime, store, stop_after_epoch=1)
    after_one = snapshot(model)
    assert not any(changed_keys(before, after_one, owner, [*lower, *upper], "").values())  # body untouched
    assert not torch.equal(before["head.weight"], after_one["head.weight"])

    fit(model, plan, train, val, spec, params, runtime, store)  # resumes for epoch 2: the upper group joins
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    model.load_state_dict(last["model"])  # the epoch-2 weights, not the best epoch's
    after_two = snapshot(model)
    assert all(changed_keys(after_one, after_two, owner, upper).values())
    assert not any(changed_keys(after_one, after_two, owner, lower, "").values())


def test_head_init_probe_starts_the_fine_tune_where_feature_extraction_ends(prepared, tmp_path, tiny_params):
    """`head_init: probe`: before any step the assembled model scores the probe's validation accuracy, and the
    features it was fitted on are cached for a later feature_extraction run."""
    from transferline.model.features import cache_key
    from transferline.model.training import BatchSource, evaluate

    params = tiny_params(strategy="partial", frozen_blocks=10, head_init="probe")
    dataset = json.loads((prepared / "dataset.json").read_text())
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    torch.manual_seed(params.seed)
    model, weights = build_model(params.backbone, 3, params.pretrained)
    random_head = model.head.weight.detach().clone()
    train = train_stage.load_split(prepared, "train", 3, spec.image_size)
    val = train_stage.load_split(prepared, "val", 3, spec.image_size)
    runtime = resolve_runtime(params)
    key = cache_key(params.backbone, weights, dataset["data_version"], dataset["preprocess"], 1280)
    train_stage.start_from_probe(model, train, val, spec, params, runtime, tmp_path / "features", key, SINGLE)
    assert not torch.equal(model.head.weight, random_head)
    probe, from_cache, _ = train_stage.fit_probe_head(
        build_model(params.backbone, 3, params.pretrained)[0],
        train,
        val,
        spec,
        params,
        runtime,
        tmp_path / "features",
        key,
    )
    assert from_cache  # start_from_probe left the features cached
    torch.testing.assert_close(model.head.weight.detach(), torch.from_numpy(probe.weight), rtol=0, atol=0)
    _, accuracy = evaluate(model, BatchSource(val, runtime.device), spec, runtime, 16)
    assert accuracy == pytest.approx(probe.val_accuracy, abs=1e-6)


def test_head_init_probe_is_recorded_and_changes_the_run(run_train, tmp_path, tiny_params, caplog):
    caplog.set_level("INFO", logger="transferline")
    from transferline.model.trained_model import load_trained_model

    run_train(tiny_params(strategy="partial", frozen_blocks=10), out="random")
    run_train(tiny_params(strategy="partial", frozen_blocks=10, head_init="probe"), out="probe")
    random_model, _ = load_trained_model(tmp_path / "random" / "models")
    probe_model, meta = load_trained_model(tmp_path / "probe" / "models")
    assert meta["params"]["head_init"] == "probe" and "head_init: probe" in caplog.text
    assert not torch.equal(random_model.head.weight, probe_model.head.weight)
    assert (tmp_path / "probe" / "features" / "train.npy").is_file()
