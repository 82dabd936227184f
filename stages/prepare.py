"""Stage `prepare`: validate, de-duplicate and split the raw images; cache model-ready pixels.

Every raw file is decoded. Unusable ones are quarantined (copied aside and listed with the
reason), never silently dropped; exact duplicates are removed *before* splitting so that no
image lands in two splits. Outputs: a manifest (path, label, split, sha256), the class map,
per-split statistics as DVC metrics, and uint8 arrays at the model's input size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from transferline import atomic
from transferline.cli import run_cli, stage_parser
from transferline.config import PrepareParams, PreprocessParams, parse_section, read_params_file
from transferline.data.imaging import ImageLimits, ImageRejected, decode_image
from transferline.data.manifest import MANIFEST_NAME, ManifestRow, manifest_text
from transferline.data.preprocessing import PreprocessSpec, resize_for_model
from transferline.data.splits import SPLITS, assign_splits
from transferline.errors import DataError

log = logging.getLogger("transferline.prepare")

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")
METRICS_FILE = Path("metrics/prepare.json")


@dataclass(frozen=True)
class Record:
    path: str  # relative to the raw directory, POSIX separators
    label: str
    sha256: str
    width: int
    height: int
    mode: str
    format: str


@dataclass(frozen=True)
class Rejected:
    path: str
    label: str
    sha256: str
    reason: str


def list_raw_files(raw_dir: Path) -> list[tuple[str, str]]:
    """(relative path, label) of every file under raw_dir/<label>/, sorted."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir} does not exist: run the ingest stage first (dvc repro ingest)")
    files = []
    for class_dir in sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            files.append((path.relative_to(raw_dir).as_posix(), class_dir.name))
    return files


def inspect_file(
    raw_dir: Path, rel_path: str, label: str, limits: ImageLimits, spec: PreprocessSpec | None
) -> tuple[Record | Rejected, bytes | None]:
    """Decode one file; return its record and (if caching) its model-input pixels as raw bytes."""
    path = raw_dir / rel_path
    size = path.stat().st_size
    if size > limits.max_bytes:  # judged before reading, so a huge file never enters memory
        sha = "unread"
        return Rejected(rel_path, label, sha, f"file is {size} bytes, above prepare.max_file_bytes"), None
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode_image(data, limits)
    except ImageRejected as exc:
        return Rejected(rel_path, label, sha, exc.reason), None
    record = Record(rel_path, label, sha, decoded.width, decoded.height, decoded.source_mode, decoded.source_format)
    pixels = resize_for_model(decoded.rgb, spec).tobytes() if spec is not None else None
    return record, pixels


def _inspect_star(args: tuple) -> tuple[Record | Rejected, bytes | None]:
    return inspect_file(*args)


def inspect_all(
    raw_dir: Path,
    files: list[tuple[str, str]],
    limits: ImageLimits,
    spec: PreprocessSpec | None,
    workers: int,
) -> Iterator[tuple[Record | Rejected, bytes | None]]:
    jobs = [(raw_dir, rel, label, limits, spec) for rel, label in files]
    if workers <= 1:
        yield from map(_inspect_star, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_inspect_star, jobs, chunksize=64)


def resolve_workers(requested: int, n_files: int) -> int:
    if requested > 0:
        return requested
    return 1 if n_files < 2000 else min(os.cpu_count() or 1, 8)


def deduplicate(records: Iterable[Record]) -> tuple[list[Record], list[dict[str, str]]]:
    """Keep one record per sha256; identical content under two labels is a conflict, dropped whole."""
    by_sha: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_sha[record.sha256].append(record)
    kept, removed = [], []
    for group in by_sha.values():
        group.sort(key=lambda r: r.path)
        labels = sorted({r.label for r in group})
        if len(labels) > 1:
            for record in group:
                removed.append(
                    {
                        "path": record.path,
                        "label": record.label,
                        "sha256": record.sha256,
                        "reason": f"identical content labelled as {', '.join(labels)}: label conflict",
                    }
                )
            continue
        kept.append(group[0])
        for record in group[1:]:
            removed.append(
                {
                    "path": record.path,
                    "label": record.label,
                    "sha256": record.sha256,
                    "reason": f"exact duplicate of {group[0].path}",
                }
            )
    kept.sort(key=lambda r: r.path)
    return kept, removed


def check_data(
    files: list[tuple[str, str]], rejected: list[Rejected], kept: list[Record], params: PrepareParams
) -> None:
    """Fail with a precise message when the data cannot make a sound data set."""
    classes = sorted({label for _, label in files})
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(f"need at least 2 classes (sub-folders of data/raw), found {found}")
    if files and len(rejected) / len(files) > params.max_bad_fraction:
        shown = "; ".join(f"{r.path}: {r.reason}" for r in rejected[:10])
        more = f" (and {len(rejected) - 10} more)" if len(rejected) > 10 else ""
        raise DataError(
            f"{len(rejected)} of {len(files)} files ({len(rejected) / len(files):.1%}) are unusable, "
            f"above prepare.max_bad_fraction={params.max_bad_fraction}: {shown}{more}"
        )
    counts = Counter(r.label for r in kept)
    short = {c: counts.get(c, 0) for c in classes if counts.get(c, 0) < params.min_per_class}
    if short:
        listed = ", ".join(f"{c!r} has {n}" for c, n in sorted(short.items()))
        raise DataError(f"class(es) below prepare.min_per_class={params.min_per_class} usable images: {listed}")


def size_stats(records: list[Record]) -> dict:
    widths = np.array([r.width for r in records])
    heights = np.array([r.height for r in records])
    return {
        "width": {"min": int(widths.min()), "max": int(widths.max()), "mean": float(widths.mean())},
        "height": {"min": int(heights.min()), "max": int(heights.max()), "mean": float(heights.mean())},
        "modes": dict(sorted(Counter(r.mode for r in records).items())),
    }


def run(
    params: PrepareParams,
    preprocess: PreprocessParams,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = OUT_DIR,
    metrics_file: Path = METRICS_FILE,
    workers: int = 0,
) -> dict:
    files = list_raw_files(raw_dir)
    spec = PreprocessSpec.from_params(preprocess)
    limits = ImageLimits(max_bytes=params.max_file_bytes, max_pixels=params.max_pixels)
    workers = resolve_workers(workers, len(files))
    log.info("inspecting %d files in %s with %d worker(s)", len(files), raw_dir, workers)

    with atomic.atomic_dir(out_dir) as tmp:
        pixel_store = None
        if params.cache and files:
            shape = (len(files), spec.image_size, spec.image_size, 3)
            pixel_store = np.lib.format.open_memmap(tmp / "all.tmp.npy", "w+", np.uint8, shape)
        records: list[Record] = []
        rejected: list[Rejected] = []
        row_of: dict[str, int] = {}
        cache_spec = spec if params.cache else None
        for index, (result, pixels) in enumerate(inspect_all(raw_dir, files, limits, cache_spec, workers)):
            if isinstance(result, Rejected):
                rejected.append(result)
                continue
            records.append(result)
            if pixel_store is not None and result.path not in row_of:
                pixel_store[index] = np.frombuffer(pixels, np.uint8).reshape(pixel_store.shape[1:])
                row_of[result.path] = index

        kept, duplicates = deduplicate(records)
        check_data(files, rejected, kept, params)
        classes = sorted({label for _, label in files})
        class_index = {name: i for i, name in enumerate(classes)}
        splits = assign_splits(
            [(r.sha256, r.label) for r in kept], params.val_fraction, params.test_fraction, params.seed
        )

        manifest = manifest_text(ManifestRow(**asdict(r), split=splits[r.sha256]) for r in kept)
        data_version = hashlib.sha256(manifest.encode()).hexdigest()[:16]
        (tmp / MANIFEST_NAME).write_text(manifest)
        by_split = {name: [r for r in kept if splits[r.sha256] == name] for name in SPLITS}
        for name in SPLITS:
            by_split[name].sort(key=lambda r: (r.label, r.path))

        if pixel_store is not None:
            (tmp / "cache").mkdir()
            for name, members in by_split.items():
                rows = np.array([row_of[r.path] for r in members], dtype=np.int64)
                np.save(tmp / "cache" / f"{name}_images.npy", pixel_store[rows])
                labels = np.array([class_index[r.label] for r in members], dtype=np.int64)
                np.save(tmp / "cache" / f"{name}_labels.npy", labels)
            del pixel_store
            (tmp / "all.tmp.npy").unlink()

        quarantine_dir = tmp / "quarantine"
        quarantine_dir.mkdir()
        for item in rejected:
            target = quarantine_dir / item.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(raw_dir / item.path, target)
        report = {
            "quarantined": [asdict(r) for r in rejected],
            "duplicates_removed": duplicates,
        }
        atomic.write_json(tmp / "quarantine.json", report)
        atomic.write_json(tmp / "classes.json", {"classes": classes})
        dataset = {
            "data_version": data_version,
            "classes": classes,
            "preprocess": spec.to_dict(),
            "splits": {name: len(members) for name, members in by_split.items()},
            "cached": bool(params.cache),
        }
        atomic.write_json(tmp / "dataset.json", dataset)

    metrics = {
        "data_version": data_version,
        "files": len(files),
        "usable": len(kept),
        "quarantined": len(rejected),
        "duplicates_removed": len(duplicates),
        "classes": len(classes),
        "splits": {
            name: {
                "total": len(members),
                "per_class": {c: sum(1 for r in members if r.label == c) for c in classes},
                "image_size": size_stats(members) if members else None,
            }
            for name, members in by_split.items()
        },
    }
    atomic.write_json(metrics_file, metrics)
    for item in rejected:
        log.warning("quarantined %s: %s", item.path, item.reason)
    log.info(
        "prepared %d images (%s), %d quarantined, %d duplicates removed, data version %s",
        len(kept),
        ", ".join(f"{n} {len(m)}" for n, m in by_split.items()),
        len(rejected),
        len(duplicates),
        data_version,
    )
    return metrics


def main(args) -> None:
    data = read_params_file(args.params)
    run(
        parse_section(data, "prepare", PrepareParams),
        parse_section(data, "preprocess", PreprocessParams),
        workers=args.workers,
    )


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="decode processes (0: automatic)")
    run_cli(main, parser)
