"""The hyperparameter search space: parsed from `search_space.yaml` and checked before any trial runs.

Keys are dotted params keys of the `train` section (`train.lr`, `train.augment.crop_scale_min`), so a
trial's values are exactly the `-S key=value` overrides that replay it with `dvc exp run`. Each entry is

    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}   # optional: step, grid
    train.frozen_blocks: {type: int, low: 0, high: 18, step: 6}
    train.strategy: {type: categorical, choices: [feature_extraction, partial]}

Every bound and choice is validated against the real TrainParams (and the backbone's block count),
so a search cannot spend an hour before its first impossible trial fails.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transferline.config import TrainParams, parse_section
from transferline.errors import ParamsError
from transferline.model.strategies import check_params

SECTION = "train"
GRID_POINTS = 3  # grid values of a float range that lists no `grid`
TUPLE_KEYS = ("probe_l2",)  # tuple-valued params searched as one value: train.probe_l2=0.01 -> [0.01]


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    grid: tuple[float, ...] | None = None

    def grid_values(self) -> list[float]:
        if self.grid:
            return list(self.grid)
        if self.step:
            count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
            return [self.low + i * self.step for i in range(count)]
        if self.log:
            ratio = math.log(self.high / self.low)
            return [self.low * math.exp(ratio * i / (GRID_POINTS - 1)) for i in range(GRID_POINTS)]
        return [self.low + (self.high - self.low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]

    def edge_values(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high), *(("grid value", v) for v in self.grid or ())]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def grid_values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def edge_values(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high)]


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]

    def grid_values(self) -> list[Any]:
        return list(self.choices)

    def edge_values(self) -> list[tuple[str, Any]]:
        return [("choice", c) for c in self.choices]


Dimension = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class SearchSpace:
    """Dotted key -> dimension, in file order; `source` names the file in every error message."""

    dimensions: dict[str, Dimension]
    source: str = "search_space.yaml"

    def grid(self) -> dict[str, list[Any]]:
        return {key: dim.grid_values() for key, dim in self.dimensions.items()}

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())

    def contains(self, values: Mapping[str, Any]) -> bool:
        """Whether every value lies within its dimension (used to check what a sampler returned)."""
        for key, dim in self.dimensions.items():
            value = values.get(key)
            if isinstance(dim, Choice):
                if value not in dim.choices:
                    return False
            elif value is None or not dim.low <= value <= dim.high:
                return False
        return set(values) == set(self.dimensions)

    def possible_values(self, leaf: str, default: Any) -> list[Any]:
        """Values a searched key can take (its edges), or the base value when it is not searched."""
        dim = self.dimensions.get(f"{SECTION}.{leaf}")
        if dim is None:
            return [default]
        return [value for _, value in dim.edge_values()]


def _fail(source: str, key: str, message: str) -> ParamsError:
    return ParamsError(f"{source}: {key}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _field_exists(key: str) -> bool:
    """Whether a dotted train key names a TrainParams field (nested models included)."""
    model: Any = TrainParams
    for part in key.split(".")[1:]:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
    return getattr(model, "model_fields", None) is None  # a leaf, not a whole sub-section


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_dimension(source: str, key: str, raw: Any) -> Dimension:
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, Mapping):
        raise _fail(source, key, f"expected a mapping with `type` (float, int, categorical), got {raw!r}")
    kind = raw.get("type")
    allowed = {"float": {"low", "high", "log", "step", "grid"}, "int": {"low", "high", "log", "step"}}
    allowed["categorical"] = {"choices"}
    if kind not in allowed:
        raise _fail(source, key, f"type must be float, int or categorical, got {kind!r}")
    unknown = sorted(set(raw) - allowed[kind] - {"type"})
    if unknown:
        raise _fail(source, key, f"unknown field(s) for a {kind} range: {', '.join(unknown)}")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(source, key, "choices must be a non-empty list")
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise _fail(source, key, f"choices must be plain values (text, numbers, true/false, null), got {choices}")
        if len({repr(c) for c in choices}) != len(choices):
            raise _fail(source, key, f"choices repeat a value: {choices}")
        return Choice(tuple(choices))
    for bound in ("low", "high"):
        if bound not in raw:
            raise _fail(source, key, f"a {kind} range needs `{bound}`")
        value = raw[bound]
        ok = isinstance(value, int) and not isinstance(value, bool) if kind == "int" else _is_number(value)
        if not ok:
            hint = ""
            if isinstance(value, str) and _looks_numeric(value):
                hint = " (YAML reads 1e-4 as text: write 1.0e-4)"
            raise _fail(
                source, key, f"{bound} must be a{'n integer' if kind == 'int' else ' number'}, got {value!r}{hint}"
            )
    low, high = raw["low"], raw["high"]
    if low >= high:
        raise _fail(source, key, f"low ({low}) must be < high ({high})")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise _fail(source, key, f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise _fail(source, key, f"a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise _fail(
                source, key, f"step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}"
            )
        if log:
            raise _fail(source, key, "step and log cannot be combined")
    if kind == "int":
        return IntRange(int(low), int(high), int(step or 1), log)
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, list) or not grid or not all(_is_number(v) for v in grid):
            raise _fail(source, key, f"grid must be a non-empty list of numbers, got {grid!r}")
        outside = [v for v in grid if not low <= v <= high]
        if outside:
            raise _fail(source, key, f"grid values {outside} lie outside [{low}, {high}]")
    return FloatRange(float(low), float(high), log, float(step) if step else None, tuple(grid) if grid else None)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of the `train` section dict with `train.a.b` set (tuple keys get their 1-tuple)."""
    parts = dotted.split(".")[1:]
    result = dict(tree)
    node = result
    for part in parts[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[parts[-1]] = [value] if parts[-1] in TUPLE_KEYS and not isinstance(value, list | tuple) else value
    return result


def resolve_params(base: dict[str, Any], values: Mapping[str, Any]) -> TrainParams:
    """The full TrainParams of one trial: the params.yaml `train` section with the trial's values on top."""
    section = dict(base)
    for key, value in values.items():
        section = set_dotted(section, key, value)
    return parse_section({SECTION: section}, SECTION, TrainParams)


def _check_value(space_source: str, key: str, what: str, value: Any, base: dict[str, Any]) -> None:
    strategies_log = logging.getLogger("transferline.model.strategies")
    level = strategies_log.level
    strategies_log.setLevel(logging.ERROR)  # "strategy X ignores Y" is noise for a lone edge value
    try:
        params = resolve_params(base, {key: value})
        check_params(params)
    except ParamsError as exc:
        reason = str(exc).removeprefix("invalid params: ")
        raise _fail(space_source, key, f"{what} ({value!r}) is not accepted by the train params: {reason}") from None
    finally:
        strategies_log.setLevel(level)


def parse_search_space(raw: Any, base: dict[str, Any], source: str = "search_space.yaml") -> SearchSpace:
    """Validate a loaded search space against the base `train` section; the first problem is raised."""
    if not isinstance(raw, Mapping) or not raw:
        raise ParamsError(f"{source}: expected a non-empty mapping of dotted train keys to ranges")
    dimensions: dict[str, Dimension] = {}
    for key, spec in raw.items():
        if not isinstance(key, str) or not key.startswith(f"{SECTION}."):
            raise _fail(source, str(key), f"only `{SECTION}.*` params can be searched (the tuner trains models)")
        if not _field_exists(key):
            raise _fail(source, key, "not a train param (see TrainParams in transferline/config.py)")
        dimension = _parse_dimension(source, key, spec)
        for what, value in dimension.edge_values():
            _check_value(source, key, what, value, base)
        dimensions[key] = dimension
    return SearchSpace(dimensions, source)


def load_search_space(path: Path, base: dict[str, Any]) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: search space file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path.name}: not valid YAML: {exc}") from exc
    return parse_search_space(raw, base, path.name)
