"""A malformed search space fails before any trial, naming the key and the problem."""

from __future__ import annotations

import pytest

from transferline.config import TrainParams, parse_section
from transferline.errors import ParamsError
from transferline.search.search_space import (
    Choice,
    FloatRange,
    IntRange,
    load_search_space,
    parse_search_space,
    resolve_params,
)

BASE = {"epochs": 2, "warmup_epochs": 0.5}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "train.lr: low (0.1) must be < high (0.01)"),
        ({"train.epochs": {"type": "int", "low": 3, "high": 3}}, "train.epochs: low (3) must be < high (3)"),
        ({"train.learning_rate": {"type": "float", "low": 0.1, "high": 1}}, "train.learning_rate: not a train param"),
        ({"train.augment": {"type": "float", "low": 0.1, "high": 1}}, "train.augment: not a train param"),
        ({"evaluate.top_k": {"type": "int", "low": 1, "high": 5}}, "evaluate.top_k: only `train.*` params"),
        ({"train.lr": {"type": "float", "low": "1e-4", "high": 0.1}}, "train.lr: low must be a number, got '1e-4'"),
        ({"train.epochs": {"type": "int", "low": 1.5, "high": 4}}, "train.epochs: low must be an integer, got 1.5"),
        (
            {"train.strategy": {"type": "categorical", "choices": []}},
            "train.strategy: choices must be a non-empty list",
        ),
        ({"train.strategy": []}, "train.strategy: choices must be a non-empty list"),
        ({"train.lr": {"type": "normal", "low": 0, "high": 1}}, "train.lr: type must be float, int or categorical"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1}}, "train.lr: low (0.0) is not accepted"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "train.lr: a log range needs low > 0"),
        ({"train.momentum": {"type": "float", "low": 0.5, "high": 1.0}}, "train.momentum: high (1.0) is not accepted"),
        (
            {"train.strategy": {"type": "categorical", "choices": ["full", "linear_probe"]}},
            "train.strategy: choice ('linear_probe') is not accepted",
        ),
        ({"train.frozen_blocks": {"type": "int", "low": 0, "high": 40}}, "train.frozen_blocks: high (40) is not"),
        ({"train.lr": {"type": "float", "low": 0.01, "high": 0.1, "scale": "log"}}, "unknown field(s) for a float"),
        ({"train.probe_l2": {"type": "float", "low": -1.0, "high": 1.0}}, "train.probe_l2: low (-1.0) is not"),
        ({"train.probe_standardise": [True, False]}, "train.probe_standardise: not a train param"),
        (
            {"train.probe_label_smoothing": {"type": "float", "low": 0.0, "high": 1.0}},
            "train.probe_label_smoothing: high (1.0) is not accepted",
        ),
        ({}, "expected a non-empty mapping"),
    ],
)
def test_malformed_space_is_refused_naming_the_problem(space, message):
    with pytest.raises(ParamsError) as caught:
        parse_search_space(space, BASE)
    assert str(caught.value).startswith("search_space.yaml: ")
    assert message in str(caught.value)


def test_a_range_that_clashes_with_another_train_param_says_which():
    # params.yaml's warmup_epochs (1.0) must stay below epochs, so an epochs range starting at 1 cannot run
    with pytest.raises(ParamsError) as caught:
        parse_search_space({"train.epochs": {"type": "int", "low": 1, "high": 4}}, {"warmup_epochs": 1.0})
    assert "train.epochs: low (1) is not accepted by the train params" in str(caught.value)
    assert "must be below epochs (1)" in str(caught.value)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "my_space.yaml"
    path.write_text("train.lr: {type: float, low: 1e-2, high: 1.0e-1}\n")
    with pytest.raises(ParamsError, match=r"my_space.yaml: train.lr: low must be a number, got '1e-2' \(YAML reads"):
        load_search_space(path, BASE)
    with pytest.raises(ParamsError, match="search space file not found"):
        load_search_space(tmp_path / "missing.yaml", BASE)


def test_valid_space_parses_to_dimensions_with_grids():
    space = parse_search_space(
        {
            "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "train.frozen_blocks": {"type": "int", "low": 0, "high": 12, "step": 6},
            "train.strategy": ["partial", "discriminative"],
            "train.augment.crop_scale_min": {"type": "float", "low": 0.5, "high": 1.0, "grid": [0.5, 1.0]},
        },
        BASE,
    )
    assert isinstance(space.dimensions["train.lr"], FloatRange)
    assert isinstance(space.dimensions["train.frozen_blocks"], IntRange)
    assert isinstance(space.dimensions["train.strategy"], Choice)
    grid = space.grid()
    assert grid["train.lr"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert grid["train.frozen_blocks"] == [0, 6, 12]
    assert grid["train.augment.crop_scale_min"] == [0.5, 1.0]
    assert space.grid_size() == 3 * 3 * 2 * 2


def test_trial_values_resolve_to_full_train_params():
    params = resolve_params(BASE, {"train.augment.crop_scale_min": 0.8, "train.probe_l2": 0.05, "train.lr": 0.002})
    assert isinstance(params, TrainParams)
    assert params.augment.crop_scale_min == 0.8 and params.augment.hflip is True
    assert params.probe_l2 == (0.05,) and params.lr == 0.002 and params.epochs == 2


def test_the_projects_default_space_is_valid():
    from tests.conftest import PROJECT_ROOT
    from transferline.config import read_params_file

    space = load_search_space(
        PROJECT_ROOT / "search_space.yaml", read_params_file(PROJECT_ROOT / "params.yaml")["train"]
    )
    assert "train.lr" in space.dimensions and "train.strategy" in space.dimensions
    assert {"train.probe_l2", "train.probe_standardize", "train.probe_label_smoothing"} <= set(space.dimensions)


def test_head_params_are_validated_and_a_misspelt_one_is_named():
    params = parse_section({"train": {"probe_standardize": False, "probe_label_smoothing": 0.1}}, "train", TrainParams)
    assert params.probe_standardize is False and params.probe_label_smoothing == 0.1
    with pytest.raises(ParamsError, match=r"train\.probe_standardise: Extra inputs are not permitted"):
        parse_section({"train": {"probe_standardise": False}}, "train", TrainParams)
    with pytest.raises(ParamsError, match=r"train\.probe_label_smoothing: Input should be less than 1"):
        parse_section({"train": {"probe_label_smoothing": 1.0}}, "train", TrainParams)
