"""Stage `ingest`: bring raw images into `data/raw/<class>/<image>` (the ImageFolder layout).

Sources: the built-in Fashion-MNIST (a stratified, seeded subset) or a user's folder of
class sub-folders, copied byte for byte so that `prepare` judges every file as it came.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import IngestParams, load_section
from transferline.data import fashion_mnist
from transferline.data.imaging import IMAGE_EXTENSIONS
from transferline.errors import DataError

log = logging.getLogger("transferline.ingest")

RAW_DIR = Path("data/raw")
REPORT_FILE = Path("metrics/ingest.json")


@dataclass
class IngestReport:
    source: str
    counts: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "classes": len(self.counts),
            "images": sum(self.counts.values()),
            "per_class": self.counts,
            "skipped": self.skipped,
        }


def write_fashion_mnist(params: IngestParams, out_dir: Path) -> IngestReport:
    data = fashion_mnist.load(params.path)
    chosen = fashion_mnist.stratified_subset(data.labels, params.per_class, params.seed)
    counts: Counter[str] = Counter()
    for index in chosen:
        name = fashion_mnist.CLASS_NAMES[int(data.labels[index])]
        class_dir = out_dir / name
        class_dir.mkdir(exist_ok=True)
        Image.fromarray(data.images[index], mode="L").save(
            class_dir / f"fmnist-{data.origins[index]}.png", optimize=False
        )
        counts[name] += 1
    return IngestReport("fashion_mnist", dict(sorted(counts.items())))


def scan_folder(root: Path) -> tuple[dict[str, list[Path]], list[dict[str, str]]]:
    """Image files per class sub-folder (recursively), and every other file with why it is skipped."""
    if not root.is_dir():
        raise DataError(f"ingest.path: folder {root} does not exist")
    by_class: dict[str, list[Path]] = {}
    skipped: list[dict[str, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            skipped.append({"path": str(entry), "reason": "not inside a class folder"})
            continue
        files = []
        for path in sorted(p for p in entry.rglob("*") if p.is_file()):
            relative = path.relative_to(entry)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
            else:
                reason = f"extension {path.suffix or '(none)'} is not one of {sorted(IMAGE_EXTENSIONS)}"
                skipped.append({"path": str(path), "reason": reason})
        by_class[entry.name] = files
    if not by_class:
        raise DataError(f"ingest.path: {root} has no class sub-folders (expected <class>/<image> files)")
    empty = [name for name, files in by_class.items() if not files]
    if empty:
        raise DataError(
            f"class folder(s) with no image files in {root}: {', '.join(empty)} "
            f"(supported: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return by_class, skipped


def copy_folder(params: IngestParams, out_dir: Path) -> IngestReport:
    by_class, skipped = scan_folder(params.path)
    rng = np.random.default_rng(params.seed)
    counts: dict[str, int] = {}
    for name, files in by_class.items():
        if params.per_class is not None and len(files) > params.per_class:
            keep = np.sort(rng.choice(len(files), size=params.per_class, replace=False))
            files = [files[i] for i in keep]
        class_dir = out_dir / name
        class_dir.mkdir()
        for path in files:
            flat_name = "__".join(path.relative_to(params.path / name).parts)
            shutil.copyfile(path, class_dir / flat_name)
        counts[name] = len(files)
    return IngestReport("folder", counts, skipped)


def run(params: IngestParams, raw_dir: Path = RAW_DIR, report_file: Path = REPORT_FILE) -> IngestReport:
    """Write the raw data set atomically: `raw_dir` is replaced only once it is complete."""
    writer = write_fashion_mnist if params.source == "fashion_mnist" else copy_folder
    with atomic.atomic_dir(raw_dir) as tmp:
        report = writer(params, tmp)
    atomic.write_json(report_file, report.to_dict())
    for item in report.skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    log.info(
        "ingested %d images in %d classes from %s into %s",
        sum(report.counts.values()),
        len(report.counts),
        params.source,
        raw_dir,
    )
    return report


def main(args) -> None:
    run(load_section("ingest", IngestParams, args.params))


if __name__ == "__main__":
    run_cli(main, stage_parser(__doc__.splitlines()[0]))
