"""StudyConfig is validated like params.yaml: a bad value is a ParamsError naming the field."""

from __future__ import annotations

import pytest

from flows import tune as tune_flow
from transferline.errors import ParamsError
from transferline.search.study_config import StudyConfig, default_of


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"trials": 0}, "trials: Input should be greater than or equal to 1 (got 0)"),
        ({"sampler": "annealing"}, "sampler: Input should be 'grid', 'random' or 'tpe' (got 'annealing')"),
        ({"pruner": "hyperband"}, "pruner: Input should be 'median', 'halving' or 'none'"),
        ({"grace_period": 0}, "grace_period: Input should be greater than or equal to 1"),
        ({"study_name": ""}, "study_name: String should have at least 1 character"),
        ({"n_trials": 5}, "n_trials: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_names_the_field(values, named):
    with pytest.raises(ParamsError, match="invalid study config: ") as caught:
        StudyConfig(**values)
    assert named in str(caught.value)


def test_configs_are_frozen_and_equal_configs_share_one_key():
    config = StudyConfig(trials=5)
    assert config == StudyConfig(trials=5) and hash(config) == hash(StudyConfig(trials=5))
    assert config != StudyConfig(trials=6)
    with pytest.raises(Exception, match="frozen"):
        config.trials = 6
    assert default_of("trials") == StudyConfig().trials == 20


def test_the_command_line_refuses_a_bad_value_in_one_line(capsys):
    assert tune_flow.main(["--trials", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid study config: trials:") and len(err.strip().splitlines()) == 1
