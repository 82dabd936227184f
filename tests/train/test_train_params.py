"""Bad train params fail before any work, with a message naming the param."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from stages import train as train_stage
from tests.conftest import PROJECT_ROOT, QUIET_ENV
from transferline.config import TrainParams, parse_section
from transferline.errors import ParamsError


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backbone": "vgg19"}, "train.backbone: Input should be 'mobilenet_v2'"),
        ({"strategy": "linear"}, "train.strategy: Input should be 'auto', 'feature_extraction'"),
        ({"lr": -0.001}, "train.lr: Input should be greater than 0"),
        ({"head_lr": 0}, "train.head_lr: Input should be greater than 0"),
        ({"frozen_blocks": -2}, "train.frozen_blocks: Input should be greater than or equal to 0"),
        ({"epochs": 3, "warmup_epochs": 3}, "train.warmup_epochs: Value error, must be below epochs (3)"),
        ({"pretrained": False, "weights_path": "w.pt"}, "train.weights_path: Value error, is set but pretrained"),
        ({"augment": {"crop_scale_min": 0}}, "train.augment.crop_scale_min: Input should be greater than 0"),
        ({"device": "tpu"}, "train.device: String should match pattern"),
        ({"optimiser": "adamw"}, "train.optimiser: Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_param(values, message):
    with pytest.raises(ParamsError) as error:
        parse_section({"train": values}, "train", TrainParams)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"frozen_blocks": 20}, "train.frozen_blocks: 20 is more than the 19 blocks of mobilenet_v2"),
        ({"backbone": "resnet18", "frozen_blocks": 6}, "train.frozen_blocks: 6 is more than the 5 blocks of resnet18"),
        ({"strategy": "discriminative", "frozen_blocks": 19}, "train.frozen_blocks: 19 freezes every block"),
        ({"device": "cuda:99"}, "train.device: 'cuda:99' asked for"),
        ({"device": "cpu", "amp": "fp16"}, "train.amp: fp16 needs a CUDA device"),
        ({"weights_path": "/nonexistent/weights.pt"}, "train.weights_path: /nonexistent/weights.pt does not exist"),
    ],
)
def test_checks_that_need_the_backbone_or_machine_fail_before_data_is_read(tmp_path, values, message):
    # the prepared directory does not exist: reaching the data would be a DataError instead
    with pytest.raises(ParamsError) as error:
        train_stage.run(
            TrainParams(**values),
            prepared_dir=tmp_path / "absent",
            models_dir=tmp_path / "models",
            features_dir=tmp_path / "features",
            checkpoint_dir=tmp_path / "ckpt",
            metrics_file=tmp_path / "m.json",
            live_dir=None,
        )
    assert message in str(error.value)
    assert not any(tmp_path.iterdir()), "nothing may be written before the params are known to be good"


def test_the_cli_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"frozen_blocks": 40}}))
    result = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=tmp_path,
        env={**QUIET_ENV, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: train.frozen_blocks: 40 is more than the 19 blocks of mobilenet_v2" in result.stderr
    assert "Traceback" not in result.stderr
