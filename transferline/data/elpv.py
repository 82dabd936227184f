"""The ELPV data set: 2,624 electroluminescence images of solar cells (300x300 grey PNG), each with a
defect probability (0, 1/3, 2/3 or 1, from expert review) and the cell type (mono- or polycrystalline).

Deitsch et al., Solar Energy 185 (2019); data by Buerhop-Lutz et al. (2018); licence CC BY-NC-SA 4.0
(non-commercial). The `elpv-dataset` Python package ships it; the set-up step
(transferline/data/assets.py) copies it into `data/external/elpv` as `labels.csv` plus `images/`,
the package's own layout, and the ingest stage reads it from there.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from transferline.errors import AssetError

PACKAGE = "elpv_dataset"
PIP_NAME = "elpv-dataset"
LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
CELL_TYPES = ("mono", "poly")
LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
DEFECTIVE_FROM = 0.5  # a cell at least this likely to be defective counts as defective
TASKS = ("functional_vs_defective", "defect_level")
DEFAULT_TASK = "functional_vs_defective"


@dataclass(frozen=True)
class Cell:
    image: str  # path relative to the data directory, e.g. "images/cell0001.png"
    probability: float  # one of LEVELS
    cell_type: str  # one of CELL_TYPES

    @property
    def name(self) -> str:
        """The image's stable name ("cell0001"): what seeds the subset and names the raw file."""
        return Path(self.image).stem


def level_percent(probability: float) -> int:
    return round(probability * 100)


def class_names(task: str) -> tuple[str, ...]:
    """Every class of a task, in order; the defect levels are zero-padded so they also sort in order."""
    if task == "functional_vs_defective":
        return ("defective", "functional")
    return tuple(f"defect_{level_percent(p):03d}" for p in LEVELS)


def class_of(cell: Cell, task: str) -> str:
    if task == "functional_vs_defective":
        return "defective" if cell.probability >= DEFECTIVE_FROM else "functional"
    return f"defect_{level_percent(cell.probability):03d}"


def parse_labels(text: str, source: str = LABELS_FILE) -> list[Cell]:
    """Parse the whitespace-separated `path probability type` lines; AssetError names a bad line."""
    cells = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) != 3:
            raise AssetError(f"{where}: expected 'path probability type', got {line.strip()!r}")
        image, probability_text, cell_type = fields
        try:
            probability = float(probability_text)
        except ValueError:
            raise AssetError(f"{where}: probability {probability_text!r} is not a number") from None
        if not any(math.isclose(probability, level, abs_tol=1e-6) for level in LEVELS):
            raise AssetError(f"{where}: probability {probability} is not one of 0, 1/3, 2/3, 1")
        if cell_type not in CELL_TYPES:
            raise AssetError(f"{where}: cell type {cell_type!r} is not one of {', '.join(CELL_TYPES)}")
        if Path(image).is_absolute() or ".." in Path(image).parts:
            raise AssetError(f"{where}: image path {image!r} must stay inside the data directory")
        cells.append(Cell(image, probability, cell_type))
    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise AssetError(f"{source}: image names are not unique")
    if not cells:
        raise AssetError(f"{source} lists no images")
    return cells


def load(directory: Path) -> list[Cell]:
    """The cells listed in `directory/labels.csv`, every image checked to be present."""
    labels = directory / LABELS_FILE
    if not labels.is_file():
        raise AssetError(
            f"ELPV data missing: {labels} does not exist. Run `make assets` (or "
            "`python -m transferline.data.assets elpv`) to copy it from the installed elpv-dataset package."
        )
    cells = parse_labels(labels.read_text(), str(labels))
    missing = [cell.image for cell in cells if not (directory / cell.image).is_file()]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise AssetError(
            f"ELPV data in {directory} is incomplete: {', '.join(missing[:5])}{more} missing. "
            "Delete the folder and run `python -m transferline.data.assets elpv` again."
        )
    return cells


def packaged_dir() -> Path:
    """The data folder inside the installed elpv-dataset package (no import: nothing is loaded)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the {PIP_NAME} package is not installed: pip install -e '.[elpv]' (or pip install {PIP_NAME})"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (directory / LABELS_FILE).is_file():
        raise AssetError(f"{directory / LABELS_FILE} is missing: reinstall the {PIP_NAME} package")
    return directory
