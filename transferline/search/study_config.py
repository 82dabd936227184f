"""The settings of one hyperparameter search, validated like params.yaml's sections: a bad value is a
ParamsError naming the field before any study is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transferline.config import describe_errors
from transferline.errors import ParamsError

SamplerName = Literal["grid", "random", "tpe"]
PrunerName = Literal["median", "halving", "none"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
PRUNERS: tuple[str, ...] = get_args(PrunerName)


class StudyConfig(BaseModel):
    """Everything a trial worker needs, as plain values: it travels to Prefect tasks (and other machines).

    Frozen, hence hashable: one trial runner (data, features) is kept per config and process.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    space_file: str = "search_space.yaml"
    params_file: str = "params.yaml"
    prepared_dir: str = "data/prepared"
    work_dir: str = "tuning"
    storage: str | None = None  # None: sqlite:///<work_dir>/study.db
    study_name: str = Field(default="transferline", min_length=1)
    sampler: SamplerName = "tpe"
    seed: int = 0
    trials: int = Field(default=20, ge=1)
    pruner: PrunerName = "median"
    pruner_startup_trials: int = Field(default=3, ge=0)
    pruner_warmup_epochs: int = Field(default=1, ge=0)
    heartbeat_interval: int = Field(default=30, ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(default=120, ge=1)  # seconds without a heartbeat before a trial counts as dead
    max_retry: int = Field(default=2, ge=0)
    reuse_features: bool = True  # False only to measure what recomputing features per trial costs

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ParamsError("invalid study config: " + describe_errors(exc)) from None

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.work_dir).resolve() / 'study.db'}"


def default_of(field: str) -> Any:
    """A field's default, for command-line defaults and derived values."""
    return StudyConfig.model_fields[field].default
