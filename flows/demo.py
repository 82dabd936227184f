"""The end of `make demo`: ask the served champion about a held-out test image and a photo.

The test image comes from the current data's test split (the manifest), so its true label is
known and printed beside the answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.service_control import controller_from_params
from serving.client import ClientError, classify, render
from transferline.data.manifest import split_rows
from transferline.errors import DataError

SAMPLE_PHOTO = Path("data/external/samples/chelsea.jpg")


def first_test_image(repo: Path) -> tuple[Path, str]:
    row = split_rows(repo / "data" / "prepared", "test")[0]
    return repo / "data" / "raw" / row.path, row.label


def main(repo: Path = Path(".")) -> int:
    from flows.service_control import main as service_main

    if service_main(["ensure", "--repo", str(repo)]) != 0:
        return 2
    url = controller_from_params(repo).url
    try:
        image, label = first_test_image(repo)
        paths = [image, *([repo / SAMPLE_PHOTO] if (repo / SAMPLE_PHOTO).is_file() else [])]
        for path in paths:
            print(render([path], classify([path], url=url, top_k=3)))
    except (ClientError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"(the test image's true label: {label}; the photo is outside the model's classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
