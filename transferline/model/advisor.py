"""`train.strategy: auto`: choose the transfer recipe from cheap signals, by a rule fitted on the transfer study.

The rule is data (a JSON file written by `python -m bench.transfer_study`), not thresholds written by
hand, in one of two forms. The committed one names the study's cells with their signals and each recipe's
loss, and proposes what did best on the cells nearest the new data set (`nearest_cells`). The other is a
regression tree of depth at most two over the signals, whose leaves name a recipe, fitted to minimise the
study's regret (the accuracy lost against the best recipe of each cell): auto's rule until the study showed
the nearest cells do better on data sets they were not fitted on (bench/results/transfer_study.md), kept
for the studies that compare the two. `decide` applies either to a new data set, says why it chose, and
turns the recipe into train params that fit the time budget.

The rule proposes; validation checks. Where it proposes fine-tuning, the fine-tuned model is kept only if
its validation accuracy beats the linear probe's, measured anyway as a signal on the same split, by more
than the rule's `validation_margin_se` standard errors of that difference (`check_margin`: a fixed
margin of 0.03 is an eighth of an image on 4 validation images and 18 images on 600); otherwise the
feature-extraction head, which costs seconds, is trained instead. A rule with `validation_check` was
fitted to the regret after that check, so its leaves may propose fine-tuning where it only sometimes pays.
The rule also names the fine-tune's figure the check compares (`validation_figure`): its best epoch's
validation accuracy is the highest of up to 10 noisy measurements on the same few images, so it flatters
the fine-tune against the probe's single one; its last epoch's was not selected (bench/results/transfer_study.md
measures both).

Everything here is pure: signals and rule in, advice out. Measuring the signals is
`transferline.model.advice_signals`; the study that fits the rule is `bench/transfer_study.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from transferline.errors import ParamsError
from transferline.model import nearest_cells
from transferline.model.nearest_cells import NEAREST_CELLS

SIGNALS = ("images_per_class", "num_classes", "probe_accuracy", "knn_accuracy", "logme", "pretrained_gain")
FEATURE_EXTRACTION = "feature_extraction"
MIN_EPOCHS = 3  # fewer epochs than this cannot anneal a fine-tuning schedule: pick a cheaper recipe instead
# the fine-tune's validation accuracy the check compares with the probe's: the best epoch's (restored and
# shipped) or the last epoch's (not the maximum over epochs, so not biased up by that selection)
BEST_EPOCH, LAST_EPOCH = "best_epoch", "last_epoch"
VALIDATION_FIGURES = (BEST_EPOCH, LAST_EPOCH)


@dataclass(frozen=True)
class Signals:
    """What the advisor knows about a data set before fine-tuning (all measured on train/val features)."""

    images_per_class: float  # training images per class (mean)
    num_classes: int
    probe_accuracy: float  # the linear probe's val accuracy on pretrained features
    knn_accuracy: float  # cosine k-NN val accuracy on pretrained features
    logme: float  # LogME evidence per example, pretrained features
    # probe val accuracy on pretrained minus on random-init features; None where it was not measured (it
    # takes a second forward pass, paid only when the rule reads it: `signals_read`)
    pretrained_gain: float | None = None

    def value(self, name: str) -> float:
        value = getattr(self, name)
        if value is None:
            raise ParamsError(f"advisor rule reads {name}, which was not measured")
        return float(value)

    def measured(self) -> dict[str, float | None]:
        """Every signal by name, None where it was not measured: what advice.json shows."""
        return {name: getattr(self, name) for name in self.names()}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The signals this kind carries, in order: SIGNALS here; a study's candidate signals in a subclass
        (bench/landmarkers.py), which a rule fitted on its cells may then split on."""
        return tuple(f.name for f in fields(cls))


def signals_read(tree: dict[str, Any]) -> set[str]:
    """The signals a rule (or a rule's tree) reads: the only ones `auto` must measure to apply it."""
    if NEAREST_CELLS in tree:
        return set(tree[NEAREST_CELLS]["signals"])
    if "tree" in tree:
        return signals_read(tree["tree"])
    if "recipe" in tree:
        return set()
    return {tree["signal"]} | signals_read(tree["le"]) | signals_read(tree["gt"])


def reads_gain(rule: dict[str, Any], signals: Signals | None = None) -> bool:
    """Whether walking the rule needs `pretrained_gain`, the one signal that needs a forward pass of its
    own: anywhere in its tree, or, given the data set's other `signals`, on the path they take (a rule that
    reads the gain only for small data sets does not make a large one pay for it)."""
    if signals is None or NEAREST_CELLS in rule:
        return "pretrained_gain" in signals_read(rule)
    node = rule["tree"]
    while "recipe" not in node:
        if node["signal"] == "pretrained_gain":
            return True
        node = _branch(node, signals)[0]
    return False


def _branch(node: dict[str, Any], signals: Signals) -> tuple[dict[str, Any], str]:
    """The child a split sends these signals to, and the condition met."""
    name, threshold = node["signal"], node["threshold"]
    if name not in signals.names():
        raise ParamsError(f"advisor rule: unknown signal {name!r}; known: {', '.join(signals.names())}")
    value = signals.value(name)
    below = value <= threshold
    condition = f"{name} {value:.3g} {'<=' if below else '>'} {threshold:.3g}"
    return (node["le"] if below else node["gt"]), condition


@dataclass(frozen=True)
class Recipe:
    """Train params for one strategy; `frozen_fraction` becomes frozen_blocks for the chosen backbone."""

    strategy: str
    frozen_fraction: float = 0.0
    epochs: int = 10
    lr: float = 2e-3
    head_init: str = "random"  # probe: fine-tune from the feature_extraction head

    def overrides(self, num_blocks: int, epochs: int) -> dict[str, Any]:
        values: dict[str, Any] = {"strategy": self.strategy, "lr": self.lr}
        if self.head_init != "random":
            values["head_init"] = self.head_init
        if self.strategy in ("partial", "discriminative"):
            values["frozen_blocks"] = min(num_blocks - 1, round(self.frozen_fraction * num_blocks))
        elif self.strategy == "full":
            values["frozen_blocks"] = 0
        if self.strategy != "feature_extraction":
            values["epochs"] = epochs
            values["warmup_epochs"] = min(1.0, epochs / 4)
        return values


@dataclass
class Advice:
    """The decision and its reasons: what models/advice.json holds."""

    recipe: str
    params: dict[str, Any]
    path: list[str]  # the rule's conditions that fired, root first
    expected_accuracy: tuple[float, float]  # from the leaf's observed gains over the probe
    estimated_seconds: float
    budget_seconds: float | None
    notes: list[str] = field(default_factory=list)
    signals: dict[str, float | None] = field(default_factory=dict)  # None: not measured (the rule does not read it)
    validation_check: bool = False  # the rule asks for the check after fine-tuning (see the module's doc)
    validation_margin_se: float = 0.0  # by how many standard errors (check_margin) a fine-tune must beat the probe
    validation_figure: str = BEST_EPOCH  # which of the fine-tune's validation accuracies the check compares
    validation: dict[str, Any] | None = None  # the validation check's figures and verdict, once it has run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        low, high = self.expected_accuracy
        why = " and ".join(self.path) or "the study's best recipe overall"
        return (
            f"auto chose {self.recipe} ({why}); expected accuracy {low:.2f}-{high:.2f}, "
            f"~{self.estimated_seconds:.0f} s" + (f"; {'; '.join(self.notes)}" if self.notes else "")
        )

    def checked(
        self,
        best_val_accuracy: float,
        val_images: int,
        last_val_accuracy: float | None = None,
        probe_val_accuracy: float | None = None,
    ) -> Advice:
        """This advice once the fine-tuned model's validation accuracy (on `val_images` images; at its best
        and at its last epoch) is known: the same, with the check's figures, and feature extraction as the
        recipe where the rule's figure of the fine-tune did not beat the probe by more than the margin.
        `probe_val_accuracy`: the feature-extraction head's, the model shipped instead (train.probe_layers);
        by default the linear probe's among the signals."""
        probe = self.signals["probe_accuracy"] if probe_val_accuracy is None else probe_val_accuracy
        figure = check_figure(self.validation_figure, best_val_accuracy, last_val_accuracy)
        margin = check_margin(self.validation_margin_se, val_images)
        kept = keep_fine_tuned(figure, probe, margin)
        verdict = {
            "fine_tuned_val_accuracy": figure,
            "figure": self.validation_figure,
            "best_epoch_val_accuracy": best_val_accuracy,
            "probe_val_accuracy": probe,
            "val_images": val_images,
            "margin_se": self.validation_margin_se,
            "margin": margin,
            "proposed": self.recipe,
            "kept": self.recipe if kept else FEATURE_EXTRACTION,
        }
        at = f" at its last epoch (best epoch {best_val_accuracy:.4f})" if self.validation_figure == LAST_EPOCH else ""
        note = (
            f"validation check: {self.recipe} reached {figure:.4f} on val{at}, the probe "
            f"{probe:.4f}"
            + (
                f" (margin {margin:.4f}: {self.validation_margin_se:g} SE on {val_images} images)"
                if self.validation_margin_se
                else ""
            )
            + f": {f'{self.recipe} kept' if kept else 'feature extraction kept'}"
        )
        if kept:
            return replace(self, notes=[*self.notes, note], validation=verdict)
        return replace(
            self,
            recipe=FEATURE_EXTRACTION,
            params=Recipe(FEATURE_EXTRACTION).overrides(num_blocks=0, epochs=0),
            expected_accuracy=(probe, probe),  # as when the budget falls back: the probe's own score
            notes=[*self.notes, note],
            validation=verdict,
        )


def check_figure(figure: str, best_val_accuracy: float, last_val_accuracy: float | None) -> float:
    """The fine-tune's validation accuracy that the check compares with the probe's, as the rule names it."""
    if known_figure(figure) == LAST_EPOCH:
        if last_val_accuracy is None:
            raise ValueError("the rule's validation check compares the last epoch, and none was given")
        return last_val_accuracy
    return best_val_accuracy


def check_margin(margin_se: float, val_images: int) -> float:
    """The validation check's margin in accuracy: `margin_se` standard errors of the difference between two
    accuracies measured on `val_images` images each, at its widest (both near 0.5: sqrt(0.5 / n))."""
    if margin_se and val_images < 1:
        raise ValueError(f"a validation margin needs validation images, got {val_images}")
    return margin_se * math.sqrt(0.5 / val_images) if margin_se else 0.0


def keep_fine_tuned(fine_tuned_val_accuracy: float, probe_val_accuracy: float, margin: float = 0.0) -> bool:
    """Whether fine-tuning earned its place: better on the validation split than the probe on the same
    images by more than `margin`. A tie keeps the probe: its head costs seconds and its features come
    straight from the pretrained backbone, so there is less to have fitted to the validation split; the
    fine-tuned model picked its best epoch on that split, so its figure there is biased upward."""
    return fine_tuned_val_accuracy > probe_val_accuracy + margin + 1e-12


# ---------------------------------------------------------------- the rule as data


def leaf(recipe: str, gains: list[float]) -> dict[str, Any]:
    return {"recipe": recipe, "gain_over_probe": [min(gains), max(gains)] if gains else [0.0, 0.0], "cells": len(gains)}


@dataclass(frozen=True)
class Proposal:
    """What a rule proposes for a data set, why, and the gains over the probe behind the proposal."""

    recipe: str
    path: list[str]  # the reasons, in order
    gain_over_probe: tuple[float, float]


def propose(rule: dict[str, Any], signals: Signals) -> Proposal:
    """The recipe the rule proposes for these signals, as either form of rule gives it."""
    if NEAREST_CELLS in rule:
        return _nearest_proposal(rule[NEAREST_CELLS], signals)
    node, path = walk(rule["tree"], signals)
    low, high = node["gain_over_probe"]
    return Proposal(node["recipe"], path, (low, high))


def _nearest_proposal(policy: dict[str, Any], signals: Signals) -> Proposal:
    for name in policy["signals"]:
        if name not in signals.names():
            raise ParamsError(f"advisor rule: unknown signal {name!r}; known: {', '.join(signals.names())}")
    choice = nearest_cells.choose(policy, signals.value)
    shown = ", ".join(f"{name} {signals.value(name):.3g}" for name in policy["signals"])
    others = sorted(choice.pooled, key=choice.pooled.get)[1:3]
    path = [
        f"the {len(choice.neighbours)} study cells nearest {shown}: {', '.join(choice.neighbours)}",
        f"{choice.recipe} costs least over them ({choice.pooled[choice.recipe]:.3f}: regret beyond one SE "
        f"+ {policy['cpu_weight']:g} x CPU share"
        + "".join(f"; {name} {choice.pooled[name]:.3f}" for name in others)
        + ")",
    ]
    return Proposal(choice.recipe, path, choice.gain_over_probe)


def walk(tree: dict[str, Any], signals: Signals) -> tuple[dict[str, Any], list[str]]:
    """The leaf this data set reaches, and the conditions met on the way."""
    path = []
    node = tree
    while "recipe" not in node:
        node, condition = _branch(node, signals)
        path.append(condition)
    return node, path


def decide(
    signals: Signals,
    rule: dict[str, Any],
    num_blocks: int,
    train_images: int,
    seconds_per_image_epoch: dict[str, float],
    budget_seconds: float | None,
) -> Advice:
    """Apply the rule, then fit the recipe into the budget: fewer epochs, or a cheaper recipe if it cannot."""
    recipes = {name: Recipe(**values) for name, values in rule["recipes"].items()}
    proposal = propose(rule, signals)
    name, path = proposal.recipe, proposal.path
    if name not in recipes:
        raise ParamsError(f"advisor rule proposes recipe {name!r}, which the rule does not define")
    notes = []
    chosen = recipes[name]
    epochs = chosen.epochs
    cost = _seconds(chosen, epochs, train_images, seconds_per_image_epoch)
    if budget_seconds is not None and cost > budget_seconds and chosen.strategy != "feature_extraction":
        per_epoch = cost / epochs
        fitting = int(budget_seconds // per_epoch)
        if fitting >= MIN_EPOCHS:
            notes.append(f"{epochs} epochs (~{cost:.0f} s) exceed the {budget_seconds:.0f} s budget: {fitting} epochs")
            epochs = fitting
        else:
            notes.append(
                f"{name} needs ~{per_epoch * MIN_EPOCHS:.0f} s for {MIN_EPOCHS} epochs, over the "
                f"{budget_seconds:.0f} s budget: feature extraction instead"
            )
            name, chosen = _cheapest(recipes)
            epochs = chosen.epochs
        cost = _seconds(chosen, epochs, train_images, seconds_per_image_epoch)
    gains = proposal.gain_over_probe if proposal.recipe == name else (0.0, 0.0)
    return Advice(
        recipe=name,
        params=chosen.overrides(num_blocks, epochs),
        path=path,
        expected_accuracy=expected_range(signals.probe_accuracy, gains),
        estimated_seconds=cost,
        budget_seconds=budget_seconds,
        notes=notes,
        signals=signals.measured(),
        validation_check=bool(rule.get("validation_check", False)) and chosen.strategy != FEATURE_EXTRACTION,
        validation_margin_se=float(rule.get("validation_margin_se", 0.0)),
        validation_figure=validation_figure_of(rule),
    )


def expected_range(probe_accuracy: float, gain_over_probe: tuple[float, float]) -> tuple[float, float]:
    """The test accuracy a proposal expects: the probe plus the lowest and highest gain its cells reached."""
    low, high = gain_over_probe
    return _clip(probe_accuracy + low), _clip(probe_accuracy + high)


def validation_figure_of(rule: dict[str, Any]) -> str:
    """The rule's `validation_figure` (a rule written before it existed compared the best epoch)."""
    return known_figure(rule.get("validation_figure", BEST_EPOCH))


def known_figure(figure: str) -> str:
    """`figure` itself when it is one of VALIDATION_FIGURES; a rule naming another is refused."""
    if figure not in VALIDATION_FIGURES:
        raise ParamsError(f"advisor rule: validation_figure {figure!r} is none of {', '.join(VALIDATION_FIGURES)}")
    return figure


def _cheapest(recipes: dict[str, Recipe]) -> tuple[str, Recipe]:
    for name, recipe in recipes.items():
        if recipe.strategy == "feature_extraction":
            return name, recipe
    raise ParamsError("advisor rule: no feature_extraction recipe to fall back on when the budget is short")


def _seconds(recipe: Recipe, epochs: int, train_images: int, seconds_per_image_epoch: dict[str, float]) -> float:
    if recipe.strategy == "feature_extraction":
        return train_images * seconds_per_image_epoch.get("feature_extraction", 0.0)
    return epochs * train_images * seconds_per_image_epoch[recipe.strategy]


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


# ---------------------------------------------------------------- fitting the rule on study cells


@dataclass(frozen=True)
class Cell:
    """One (data set, size, backbone) of the study: its signals and each recipe's mean test accuracy."""

    dataset: str
    signals: Signals
    accuracy: dict[str, float]  # recipe -> mean test accuracy over seeds
    seconds: dict[str, float] = field(default_factory=dict)  # recipe -> mean wall seconds
    name: str = ""  # data set/size/backbone, for reports
    # recipe -> mean test accuracy once the validation check has run (per seed: the probe's head where the
    # fine-tuned model did not beat it on val); empty where the study did not record validation accuracy
    checked: dict[str, float] = field(default_factory=dict)
    # validation margin (in standard errors, check_margin) -> `checked` under a check that demands it (the
    # study fits the margin too)
    checked_at: dict[float, dict[str, float]] = field(default_factory=dict)
    # CPU seconds of the cell's grid, what a policy's CPU share is a share of; 0: every recipe in `seconds`.
    # A recipe measured beside the grid (a choice, or a peer's recipe) then leaves the denominator alone.
    grid_seconds: float = 0.0
    validation_figure: str = BEST_EPOCH  # the fine-tune's figure the check behind `checked` compared

    def at_margin(self, margin_se: float) -> Cell:
        """This cell as a check with `margin_se` sees it (unchanged where no figures for it were recorded)."""
        return replace(self, checked=self.checked_at.get(margin_se, self.checked))

    def regret(self, recipe: str) -> float:
        return max(self.accuracy.values()) - self.accuracy[recipe]

    def outcome(self, recipe: str, checked: bool = False) -> float:
        """The test accuracy of choosing `recipe`, or with `checked` of proposing it under the validation
        check (the plain accuracy where the study recorded no validation figures)."""
        return self.checked.get(recipe, self.accuracy[recipe]) if checked else self.accuracy[recipe]

    def checked_regret(self, recipe: str) -> float:
        return max(self.accuracy.values()) - self.outcome(recipe, checked=True)

    def grid_cost(self) -> float:
        return self.grid_seconds or sum(self.seconds.values())

    def checked_seconds(self, recipe: str) -> float:
        """CPU seconds of proposing `recipe` under the check: a fine-tuning recipe also pays for the probe."""
        extra = self.seconds.get(FEATURE_EXTRACTION, 0.0) if recipe != FEATURE_EXTRACTION else 0.0
        return self.seconds[recipe] + extra


Loss = Callable[[Cell, str], float]  # a recipe's cost in a cell: what the tree's leaves minimise


def fit_rule(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    max_depth: int = 2,
    min_leaf: int = 2,
    loss: Loss | None = None,
    checked: bool = False,
) -> dict[str, Any]:
    """The regression tree (depth <= max_depth) whose leaves minimise the cells' total loss, by default
    the regret (accuracy lost against the cell's best recipe).

    Exhaustive over signals and midpoint thresholds: the study has tens of cells, so this takes well under
    a second at depth 2 and, unlike greedy growth, finds the best tree of that depth. A split must leave
    `min_leaf` cells on each side, and must lower the loss, so an unhelpful signal never appears in the
    rule. Other losses are for the study's comparison of fitting methods (bench/rule_variants.py).
    `checked`: the leaves are proposals under the validation check, so the default loss and each leaf's
    gains over the probe are those after it.
    """
    names = [name for name in recipes if all(name in c.accuracy for c in cells)]
    if not cells or not names:
        raise ValueError("fit_rule needs cells with results for at least one common recipe")
    kinds = {type(c.signals) for c in cells}
    if len(kinds) > 1:
        raise ValueError(f"fit_rule needs cells carrying the same signals, got {sorted(k.__name__ for k in kinds)}")
    signals = kinds.pop().names()
    loss = loss or (Cell.checked_regret if checked else Cell.regret)
    search = _TreeSearch(
        losses=np.array([[loss(c, name) for name in names] for c in cells]),  # each loss once, not per split
        values=np.array([[c.signals.value(signal) for signal in signals] for c in cells]),
        min_leaf=min_leaf,
    )
    plan, _ = search.best(np.arange(len(cells)), max_depth)
    tree = _materialise(plan, cells, names, signals, search, checked)
    return {"tree": tree, "recipes": recipes, "signals": list(signals)}


@dataclass(frozen=True)
class _TreeSearch:
    """The exhaustive search over index arrays into a (cells x recipes) loss matrix and a (cells x signals)
    value matrix. A plan is ("leaf", cells) or ("split", signal, low, high, left plan, right plan); depth 1
    is scored for every threshold at once from running sums of the sorted losses, and depth 2 for all of a
    signal's thresholds and every split below them at once the same way (`_best_two_levels`)."""

    losses: np.ndarray
    values: np.ndarray
    min_leaf: int

    def leaf(self, rows: np.ndarray) -> tuple[int, float]:
        """The recipe with the least total loss, and that loss; a tie (to 9 decimals) goes to the one
        listed first. Totals are running sums in `rows`' order, as the splits' are."""
        return _least(np.cumsum(self.losses[rows], axis=0)[-1])

    def best(self, rows: np.ndarray, depth: int) -> tuple[tuple, float]:
        """The plan of depth <= `depth` with the least loss over `rows`, and that loss."""
        if depth == 2 and len(rows) >= 2 * self.min_leaf:
            return self._best_two_levels(rows)
        return self._best_recursive(rows, depth)

    def _best_recursive(self, rows: np.ndarray, depth: int) -> tuple[tuple, float]:
        """The search as defined: every split, each side searched one level shallower, the first best split
        (in signal and threshold order) kept unless a later one is lower by more than 1e-9."""
        best_plan: tuple = ("leaf", rows)
        _, best_loss = self.leaf(rows)
        if depth == 0 or len(rows) < 2 * self.min_leaf:
            return best_plan, best_loss
        for signal in range(self.values.shape[1]):
            for low, high, left, right, split_loss in self._splits(rows, signal, depth):
                if split_loss is None:
                    left_plan, left_loss = self.best(left, depth - 1)
                    right_plan, right_loss = self.best(right, depth - 1)
                    split_loss = left_loss + right_loss
                    children = (left_plan, right_plan)
                else:
                    children = (("leaf", left), ("leaf", right))
                if split_loss < best_loss - 1e-9:  # first best in signal and threshold order, as listed
                    best_loss = split_loss
                    best_plan = ("split", signal, low, high, *children)
        return best_plan, best_loss

    def _best_two_levels(self, rows: np.ndarray) -> tuple[tuple, float]:
        """`_best_recursive(rows, 2)`, with the same answer to the bit: each top split's two sides are
        searched for all of that signal's thresholds at once, so the fits the study nests by the thousand
        (bench/transfer_analysis.py) take milliseconds. Only the chosen split's sides are searched again,
        by the recursive search, for their plans."""
        best_plan: tuple = ("leaf", rows)
        _, best_loss = self.leaf(rows)
        chosen = None
        for signal in range(self.values.shape[1]):
            order = rows[np.argsort(self.values[rows, signal], kind="stable")]
            sorted_values = self.values[order, signal]
            ends = np.flatnonzero(np.diff(sorted_values) > 0) + 1
            ends = ends[(ends >= self.min_leaf) & (len(rows) - ends >= self.min_leaf)]
            if not len(ends):
                continue
            left_losses, right_losses = self._side_losses(order, ends, True), self._side_losses(order, ends, False)
            for end, left_loss, right_loss in zip(ends, left_losses, right_losses, strict=True):
                split_loss = float(left_loss) + float(right_loss)
                if split_loss < best_loss - 1e-9:
                    best_loss, chosen = split_loss, (signal, order, sorted_values, end)
        if chosen is not None:
            signal, order, sorted_values, end = chosen
            left_plan, _ = self._best_recursive(order[:end], 1)
            right_plan, _ = self._best_recursive(order[end:], 1)
            low, high = float(sorted_values[end - 1]), float(sorted_values[end])
            best_plan = ("split", signal, low, high, left_plan, right_plan)
        return best_plan, best_loss

    def _side_losses(self, order: np.ndarray, ends: np.ndarray, left: bool) -> np.ndarray:
        """For each top boundary in `ends` (sizes of the left side of `order`, the rows sorted on the top
        split's signal), the least loss of a depth-1 plan over that side, as `_best_recursive(side, 1)`
        finds it: the same sums in the same order (a side's rows sorted on each signal, ties in `order`'s
        order; rows of the other side add exact zeros) and the same first-best scan, every signal at once."""
        size = len(order)
        position = np.arange(size)
        member = position[None, :] < ends[:, None] if left else position[None, :] >= ends[:, None]
        counts = ends if left else size - ends
        losses = self.losses[order].T  # (recipes, rows): recipes first, so minima over them are elementwise
        sides = np.cumsum(np.where(member[None], losses[:, None, :], 0.0), axis=2)[:, :, -1]
        best = np.array([_least(totals)[1] for totals in sides.T])  # each side as a leaf
        values = self.values[order]  # (rows, signals)
        by_value = np.argsort(values, axis=0, kind="stable").T  # (signals, rows): ties keep `order`'s order
        sorted_values = np.take_along_axis(values.T, by_value, axis=1)
        inside = member[:, by_value]  # (boundaries, signals, rows)
        running = np.cumsum(np.where(inside[None], losses[:, by_value][:, None], 0.0), axis=3)
        split_losses = running.min(axis=0) + (running[:, :, :, -1:] - running).min(axis=0)
        left_counts = np.cumsum(inside, axis=2)
        later = np.where(inside, sorted_values[None], np.inf)[:, :, ::-1]
        next_value = np.concatenate(
            [np.minimum.accumulate(later, axis=2)[:, :, ::-1][:, :, 1:], np.full((*inside.shape[:2], 1), np.inf)],
            axis=2,
        )
        allowed = (
            inside
            & (next_value > sorted_values[None])
            & np.isfinite(next_value)
            & (left_counts >= self.min_leaf)
            & (counts[:, None, None] - left_counts >= self.min_leaf)
        )
        candidates = np.where(allowed, split_losses, np.inf).reshape(len(ends), -1)  # in signal, threshold order
        return _first_best(candidates, best)

    def _splits(self, rows: np.ndarray, signal: int, depth: int):
        """Each allowed split of `rows` on `signal`, in threshold order: (low, high, left, right, loss),
        the loss given here when both sides are leaves (depth 1), else None for the caller to search."""
        order = rows[np.argsort(self.values[rows, signal], kind="stable")]
        sorted_values = self.values[order, signal]
        ends = np.flatnonzero(np.diff(sorted_values) > 0) + 1  # left sizes at each boundary between values
        ends = ends[(ends >= self.min_leaf) & (len(rows) - ends >= self.min_leaf)]
        if depth == 1 and len(ends):
            running = np.cumsum(self.losses[order], axis=0)
            left_totals = running[ends - 1]
            right_totals = running[-1] - left_totals
            split_losses = left_totals.min(axis=1) + right_totals.min(axis=1)
        else:
            split_losses = [None] * len(ends)
        for end, split_loss in zip(ends, split_losses, strict=True):
            yield (
                float(sorted_values[end - 1]),
                float(sorted_values[end]),
                order[:end],
                order[end:],
                None if split_loss is None else float(split_loss),
            )


def _least(totals: np.ndarray) -> tuple[int, float]:
    """The index of the least of `totals` (a tie to 9 decimals goes to the first) and its value."""
    rounded = [round(float(t), 9) for t in totals]
    best = rounded.index(min(rounded))
    return best, float(totals[best])


def _first_best(candidates: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per row, the loss a scan along `candidates` from `start` ends with when it takes each candidate lower
    than its current loss by more than 1e-9: jumping from record to record rather than column by column."""
    best = start.copy()
    after = np.full(len(best), -1)
    columns = np.arange(candidates.shape[1])
    while True:
        lower = (candidates < best[:, None] - 1e-9) & (columns[None, :] > after[:, None])
        rows = np.flatnonzero(lower.any(axis=1))
        if not len(rows):
            return best
        first = lower[rows].argmax(axis=1)
        best[rows] = candidates[rows, first]
        after[rows] = first


def _materialise(
    plan: tuple, cells: list[Cell], names: list[str], signals: tuple[str, ...], search: _TreeSearch, checked: bool
) -> dict:
    """A plan as the rule's JSON tree: leaves with their recipe and observed gains over the probe."""
    if plan[0] == "leaf":
        rows = plan[1]
        best = names[search.leaf(rows)[0]]
        return leaf(best, [cells[i].outcome(best, checked) - cells[i].signals.probe_accuracy for i in rows])
    _, signal, low, high, left, right = plan
    return {
        "signal": signals[signal],
        "threshold": _short_threshold(low, high),
        "le": _materialise(left, cells, names, signals, search, checked),
        "gt": _materialise(right, cells, names, signals, search, checked),
    }


def _short_threshold(low: float, high: float) -> float:
    """The number with the fewest significant digits in [low, high): a rule people can read, splitting the
    same cells as the midpoint would."""
    middle = (low + high) / 2
    scale = math.floor(math.log10(max(abs(low), abs(high), 1e-12)))
    for digits in range(0, 12):
        candidate = round(middle, digits - scale)
        if low <= candidate < high:
            return float(candidate)
    return middle
