"""The end of `make demo`: ask the served champion about a held-out test image and a photo.

The test image comes from the current data's test split (the manifest), so its true label is
known and printed beside the answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.service_control import controller_from_params
from serving.client import classify, render
from transferline.cli import cli_parser, run_command
from transferline.data.manifest import split_rows

SAMPLE_PHOTO = Path("data/external/samples/chelsea.jpg")


def first_test_image(repo: Path) -> tuple[Path, str]:
    row = split_rows(repo / "data" / "prepared", "test")[0]
    return repo / "data" / "raw" / row.path, row.label


def ask_champion(repo: Path) -> int:
    """Start the service if it is not running, then print its answers for a test image and a photo."""
    from flows.service_control import main as service_main

    if service_main(["ensure", "--repo", str(repo)]) != 0:
        return 2
    url = controller_from_params(repo).url
    image, label = first_test_image(repo)
    paths = [image, *([repo / SAMPLE_PHOTO] if (repo / SAMPLE_PHOTO).is_file() else [])]
    for path in paths:
        print(render([path], classify([path], url=url, top_k=3)))  # a ClientError is the shell's one error line
    print(f"(the test image's true label: {label}; the photo is outside the model's classes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Ask the served champion about a held-out test image and a photo.")
    parser.add_argument("--repo", type=Path, default=Path("."))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda args: ask_champion(args.repo), build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
