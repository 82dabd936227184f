"""The transfer study's design: the data sets, sizes, backbones, recipes and seeds it runs, and the names
of the policies it judges. Shared by the study, its report and the held-out rounds (bench/transfer_holdout.py),
so a recipe or a label is defined once."""

from __future__ import annotations

from typing import Any

from bench.transfer_analysis import TARGET_SHARE
from transferline.model.advisor import LAST_EPOCH

# ---------------------------------------------------------------- what the grid runs

DATASETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"source": "fashion_mnist", "path": "data/external/fashion-mnist"},
    "elpv_defective": {"source": "elpv", "path": "data/external/elpv", "task": "functional_vs_defective"},
    "elpv_levels": {"source": "elpv", "path": "data/external/elpv", "task": "defect_level"},
    # scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes): a third domain, far from
    # ImageNet and unrelated to the others (the two ELPV tasks share their images), written out as a folder.
    "digits": {"source": "folder", "path": "sources/digits"},
    # Two more domains (bench/study_sources.py): scikit-image's LFW faces against non-face patches (natural
    # photos, 100 a class), and Animal-MNIST's silhouettes of 10 species (shape alone, 1,000 a class).
    "faces": {"source": "folder", "path": "sources/faces"},
    "animals": {"source": "folder", "path": "sources/animals"},
    # CIFAR-10's first training batch (10,000 32x32 colour photos of 10 classes), the domain closest to
    # ImageNet. It joined after the rule fitted on the six above had been judged on it, held out
    # (bench/transfer_holdout.py, bench/results/transfer_holdout_cifar10.md).
    "cifar10": {"source": "folder", "path": "sources/cifar10"},
    # Emoji artwork in two designs, classed by Unicode category (9 classes): clip art. It joined after the
    # rule fitted on the seven above had been judged on it (bench/results/transfer_holdout_emoji.md).
    "emoji": {"source": "folder", "path": "sources/emoji"},
    # 10,000 MNIST digits (28x28 scans, 863 to 1,127 a class): the first data set with 400 images a class
    # that joined after being held out; it joined once the rule fitted on the eight above had been judged
    # on it (bench/results/transfer_holdout_mnist.md).
    "mnist": {"source": "folder", "path": "sources/mnist"},
    # The letters A to J in 455 to 459 display typefaces a class (28x28 renderings of Debian's fonts-aenigma):
    # designed letterforms. It joined once the rule fitted on the nine above had been judged on it
    # (bench/results/transfer_holdout_glyphs.md). No class reaches 400 images outside the held-out quarter,
    # so, like the digits and the faces, it has no cell at 400.
    "glyphs": {"source": "folder", "path": "sources/glyphs"},
    # The Open Clip Art Library's drawings of seven topics (64x64 on white, Debian's openclipart-png): things
    # drawn by many hands. It joined once the rule fitted on the ten above and its six-signal rival had been
    # judged on it (bench/results/transfer_holdout_clipart.md); no class reaches 400 outside the held-out quarter.
    "clipart": {"source": "folder", "path": "sources/clipart"},
    # Battle for Wesnoth's unit pictures by race (9 classes, 72x72 pixel art on white, Debian's
    # wesnoth-1.16-data). It joined once the rule fitted on the eleven above had been judged on it
    # (bench/results/transfer_holdout_units.md); seeds 1 and 2 then ran in its two cells at 400 a class.
    "units": {"source": "folder", "path": "sources/units"},
}

SIZES: list[int | None] = [10, 30, 100, 400]

BACKBONES = ["mobilenet_v2", "efficientnet_lite0"]

# The grid: the strategies the study compares, partial at two depths (a quarter and half of the backbone's
# blocks frozen). Every policy's CPU share is a share of these recipes' CPU time.
GRID: dict[str, dict[str, Any]] = {
    "feature_extraction": {"strategy": "feature_extraction"},
    "partial_quarter": {"strategy": "partial", "frozen_fraction": 0.25, "epochs": 10, "lr": 2e-3},
    "partial_half": {"strategy": "partial", "frozen_fraction": 0.5, "epochs": 10, "lr": 2e-3},
    "full": {"strategy": "full", "epochs": 10, "lr": 1e-3},
    "discriminative": {"strategy": "discriminative", "frozen_fraction": 0.0, "epochs": 10, "lr": 2e-3},
}

# The recipes the advisor chooses between (its rule's leaves): the grid's, and half frozen for 5 epochs, so
# the rule chooses the schedule's length too. That one is run in every cell and may be a cell's best, but
# stays out of the CPU shares' denominator: a recipe added to choose from must not make every share smaller.
RECIPES: dict[str, dict[str, Any]] = {
    **GRID,
    "partial_half_5ep": {"strategy": "partial", "frozen_fraction": 0.5, "epochs": 5, "lr": 2e-3},
}

# Recipes run in every cell and compared with the grid's, not (yet) among auto's choices: half the blocks
# frozen as partial_half, fine-tuned from the linear probe's head instead of a random one (linear probing then
# fine-tuning, Kumar et al., ICLR 2022: a random head's first gradients distort the pretrained features).
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "partial_half_from_probe": {**RECIPES["partial_half"], "head_init": "probe"},
    # the same, the starting head fitted with the fine-tune's own label smoothing (0.1): a head at the optimum
    # of the loss the fine-tune minimises, less confident than the plain probe, so the first steps pull less
    # on the body
    "partial_half_from_smoothed_probe": {**RECIPES["partial_half"], "head_init": "probe", "probe_label_smoothing": 0.1},
    # the linear probe on the body's last layer alone: the study's feature_extraction until its head read
    # several depths (train.probe_layers, bench/results/transfer_probe_layers.md); its runs stay, as a
    # comparison and as the grid CPU's measure of a feature_extraction run (`--rerun`; transfer_analysis.costed_on)
    "feature_extraction_last_layer": {"strategy": "feature_extraction", "probe_layers": [1.0]},
}

EXPERIMENT_NOTES = {
    "partial_half_from_probe": "half the blocks frozen, 10 epochs, from the linear probe's head",
    "partial_half_from_smoothed_probe": "the same, from a probe fitted with the fine-tune's label smoothing, 0.1",
    "feature_extraction_last_layer": "feature extraction, the head on the body's last layer alone",
}

# Fixed policies judged beside auto; fastai's `fine_tune`: the head alone for one epoch, then everything.
FASTAI = {"strategy": "discriminative", "frozen_blocks": 0, "gradual_unfreeze": True, "layer_groups": 1}

SEEDS_SMALL, SEEDS_LARGE, SMALL = 3, 1, 100  # seeds per cell: 3 up to 100 images per class, 1 above (more: --seeds)

# Runs made under another protocol (test set, subsets) are never mixed into a resumed study.
PROTOCOL = "held-out test set v1"

HELD_OUT = 300  # test images per class kept out of every subset; a quarter of a class that has fewer than 1,200

# ---------------------------------------------------------------- the policies judged

AUTO = "auto (leave one data set out)"

PERFECT_CHECK = "hindsight: auto's proposals under a perfect check"

UNCHECKED = "the rule alone: regret, depth 2, no validation check"

NO_BUDGET = "auto without the CPU penalty"

# auto on the cells that ran three seeds (every cell up to SMALL images a class, and larger ones given more
# seeds with --seeds), two, or one: one SE of a cell's best includes the seeds' spread only where there are
# seeds to spread
AUTO_BY_SEEDS = {
    SEEDS_SMALL: "auto, cells with three seeds",
    2: "auto, cells with two seeds",
    SEEDS_LARGE: "auto, cells with one seed",
}

GRID_ONLY = "auto choosing among the grid's recipes only (no 5-epoch recipe)"

NO_MARGIN = "auto without the CPU penalty or a validation margin"

BEST_EPOCH_CHECK = "auto, the check comparing the fine-tune's best epoch (as before)"

PLAIN_REGRET = "auto minimising the whole regret (as before)"

# auto's rule before the nearest cells replaced it: the tree the committed method fits (bench/transfer_analysis.py
# `fit_tree_rule`), judged the same way, so the change is measured on every study report
TREE_RULE = "auto's tree (the rule before nearest cells)"

# The fine-tune's validation figure auto's check compares with the probe's, and the committed rule records:
# the last epoch's. The best epoch's is the highest of up to 10 measurements on the same few images, so it
# flatters the fine-tune against the probe's one (the BEST_EPOCH_CHECK row measures the difference).
CHECK_FIGURE = LAST_EPOCH

HINDSIGHT = "hindsight: cheapest within one SE"

# the fixed policies judged beside auto: (label, the recipe every cell gets)
FIXED_POLICIES = (
    ("always partial_quarter", "partial_quarter"),
    ("always partial_half_5ep", "partial_half_5ep"),
    ("always full", "full"),
    ("always feature_extraction", "feature_extraction"),
)

HINDSIGHT_AT_TARGET = f"hindsight: cheapest within one SE in {TARGET_SHARE:.0%} of cells"
