"""Stage `ingest`: bring raw images into `data/raw/<class>/<image>` (the ImageFolder layout).

Sources (SOURCES below): the built-in Fashion-MNIST, the ELPV solar cells (transferline/data/elpv.py)
and a user's folder of class sub-folders; files that exist as files are copied byte for byte so that
`prepare` judges every file as it came. Every source takes the same seeded, nested subset of
`ingest.per_class` images per class (transferline/data/subsets.py); a class with fewer gives all it
has, and metrics/ingest.json lists it under `short_of_per_class`.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import IngestParams, load_section
from transferline.data import elpv, fashion_mnist, subsets
from transferline.data.imaging import IMAGE_EXTENSIONS
from transferline.errors import DataError

log = logging.getLogger("transferline.ingest")

RAW_DIR = Path("data/raw")
REPORT_FILE = Path("metrics/ingest.json")


ELPV_CELLS_FILE = "elpv_cells.csv"  # beside the class folders, which prepare alone reads


@dataclass
class IngestReport:
    source: str
    counts: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what only one source knows (ELPV: task, cell types)
    requested_per_class: int | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            **self.details,
            "classes": len(self.counts),
            "images": sum(self.counts.values()),
            "requested_per_class": self.requested_per_class,
            "per_class": self.counts,
            "short_of_per_class": subsets.shortfalls(self.counts, self.requested_per_class),
            "skipped": self.skipped,
        }


def write_fashion_mnist(params: IngestParams, out_dir: Path) -> IngestReport:
    data = fashion_mnist.load(params.path)
    chosen = fashion_mnist.stratified_subset(data.labels, data.origins, params.per_class, params.seed)
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
    counts: dict[str, int] = {}
    for name, files in by_class.items():
        relative = ["/".join(path.relative_to(params.path / name).parts) for path in files]
        keep = subsets.choose(relative, params.per_class, params.seed)
        class_dir = out_dir / name
        class_dir.mkdir()
        for i in keep:
            shutil.copyfile(files[i], class_dir / relative[i].replace("/", "__"))
        counts[name] = len(keep)
    return IngestReport("folder", counts, skipped)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_elpv(params: IngestParams, out_dir: Path) -> IngestReport:
    """The ELPV cells of the chosen task's classes, copied as they are; each file's name and
    elpv_cells.csv keep the cell type (mono/poly) and the defect probability, for stratifying later."""
    task = params.task or elpv.DEFAULT_TASK
    by_class: dict[str, list[elpv.Cell]] = defaultdict(list)
    for cell in elpv.load(params.path):
        by_class[elpv.class_of(cell, task)].append(cell)
    counts: dict[str, int] = {}
    cell_types: dict[str, dict[str, int]] = {}
    rows = []
    for name in sorted(by_class):
        members = by_class[name]
        keep = [members[i] for i in subsets.choose([c.name for c in members], params.per_class, params.seed)]
        class_dir = out_dir / name
        class_dir.mkdir()
        for cell in keep:
            file_name = f"elpv-{cell.name}-{cell.cell_type}.png"
            shutil.copyfile(params.path / cell.image, class_dir / file_name)
            rows.append(
                {
                    "path": f"{name}/{file_name}",
                    "label": name,
                    "defect_probability": round(cell.probability, 4),
                    "cell_type": cell.cell_type,
                    "origin": cell.image,
                }
            )
        counts[name] = len(keep)
        cell_types[name] = dict(sorted(Counter(cell.cell_type for cell in keep).items()))
    (out_dir / ELPV_CELLS_FILE).write_text(csv_text(rows))
    return IngestReport("elpv", counts, details={"task": task, "cell_types": cell_types})


Writer = Callable[[IngestParams, Path], IngestReport]
SOURCES: dict[str, Writer] = {
    "fashion_mnist": write_fashion_mnist,
    "folder": copy_folder,
    "elpv": write_elpv,
}


def run(params: IngestParams, raw_dir: Path = RAW_DIR, report_file: Path = REPORT_FILE) -> IngestReport:
    """Write the raw data set atomically: `raw_dir` is replaced only once it is complete."""
    with atomic.atomic_dir(raw_dir) as tmp:
        report = SOURCES[params.source](params, tmp)
    report.requested_per_class = params.per_class
    atomic.write_json(report_file, report.to_dict())
    for item in report.skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    for name, count in subsets.shortfalls(report.counts, params.per_class).items():
        log.warning(
            "class %s has only %d images, fewer than ingest.per_class=%d: took all", name, count, params.per_class
        )
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
