"""The prepared data set's manifest (`data/prepared/manifest.csv`), written and read in one place.

`prepare` writes it; the gate, the deploy probe and the demo read the test split from it. One checked
reader means a missing, truncated or hand-edited manifest fails with the same precise DataError
everywhere, instead of a KeyError or StopIteration deep inside a stage or a flow.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transferline.data.splits import SPLITS
from transferline.errors import DataError

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("path", "label", "split", "sha256", "width", "height", "mode", "format")


@dataclass(frozen=True)
class ManifestRow:
    """One usable image of the data set; `path` is relative to the raw directory, POSIX separators."""

    path: str
    label: str
    split: str
    sha256: str
    width: int
    height: int
    mode: str
    format: str


def manifest_text(rows: Iterable[ManifestRow]) -> str:
    """The CSV text, rows ordered by split (train, val, test), then label, then path: byte-stable."""
    order = {name: i for i, name in enumerate(SPLITS)}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for row in sorted(rows, key=lambda r: (order[r.split], r.label, r.path)):
        writer.writerow(getattr(row, field) for field in MANIFEST_FIELDS)
    return buffer.getvalue()


def _parse_row(raw: dict[str, str], where: str) -> ManifestRow:
    if None in raw or any(value is None for value in raw.values()):
        raise DataError(f"{where}: wrong number of columns, expected {len(MANIFEST_FIELDS)}")
    if raw["split"] not in SPLITS:
        raise DataError(f"{where}: split {raw['split']!r} is not one of {', '.join(SPLITS)}")
    if not raw["path"] or not raw["label"]:
        raise DataError(f"{where}: empty path or label")
    if raw["path"].startswith("/") or ".." in raw["path"].split("/"):
        raise DataError(f"{where}: path {raw['path']!r} leaves the raw directory")
    try:
        width, height = int(raw["width"]), int(raw["height"])
    except ValueError:
        raise DataError(
            f"{where}: width and height must be integers, got {raw['width']!r}, {raw['height']!r}"
        ) from None
    return ManifestRow(
        raw["path"], raw["label"], raw["split"], raw["sha256"], width, height, raw["mode"], raw["format"]
    )


def read_manifest(prepared_dir: Path) -> list[ManifestRow]:
    """Every row of `<prepared_dir>/manifest.csv`, checked; DataError naming the file and line otherwise."""
    path = prepared_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the prepare stage first (dvc repro prepare)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: re-run the prepare stage") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
        raise DataError(
            f"{path}: header is {','.join(reader.fieldnames or ()) or 'missing'}, expected {','.join(MANIFEST_FIELDS)}"
        )
    return [_parse_row(raw, f"{path} line {reader.line_num}") for raw in reader]


def split_rows(prepared_dir: Path, split: str) -> list[ManifestRow]:
    """The rows of one split; DataError when the split is empty (a test split is needed to judge a model)."""
    rows = [row for row in read_manifest(prepared_dir) if row.split == split]
    if not rows:
        raise DataError(f"{prepared_dir / MANIFEST_NAME}: the {split} split is empty: more images are needed")
    return rows
