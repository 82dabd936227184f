"""The one reader and writer of data/prepared/manifest.csv."""

from __future__ import annotations

import pytest

from transferline.data.manifest import MANIFEST_FIELDS, ManifestRow, manifest_text, read_manifest, split_rows
from transferline.errors import DataError

ROWS = [
    ManifestRow("dog/b.png", "dog", "test", "s2", 24, 24, "RGB", "PNG"),
    ManifestRow("cat/a.png", "cat", "train", "s1", 32, 16, "L", "JPEG"),
    ManifestRow("cat/c.png", "cat", "test", "s3", 24, 24, "RGB", "PNG"),
]


def write(tmp_path, text: str):
    (tmp_path / "manifest.csv").write_text(text)
    return tmp_path


def test_written_rows_read_back_equal_in_split_label_path_order(tmp_path):
    text = manifest_text(ROWS)
    assert text.splitlines()[0] == ",".join(MANIFEST_FIELDS)
    assert read_manifest(write(tmp_path, text)) == [ROWS[1], ROWS[2], ROWS[0]]
    assert [row.path for row in split_rows(tmp_path, "test")] == ["cat/c.png", "dog/b.png"]


def test_a_missing_manifest_says_to_run_prepare(tmp_path):
    with pytest.raises(DataError, match=r"manifest.csv does not exist: run the prepare stage first"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path,label\ncat/a.png,cat\n", r"header is path,label, expected path,label,split"),
        ("", r"header is missing"),
        (",".join(MANIFEST_FIELDS) + "\ncat/a.png,cat,train,s1,24\n", r"line 2: wrong number of columns"),
        (",".join(MANIFEST_FIELDS) + "\ncat/a.png,cat,holdout,s1,24,24,RGB,PNG\n", r"line 2: split 'holdout'"),
        (",".join(MANIFEST_FIELDS) + "\ncat/a.png,cat,test,s1,wide,24,RGB,PNG\n", r"width and height must be integers"),
        (",".join(MANIFEST_FIELDS) + "\n../etc/passwd,cat,test,s1,24,24,RGB,PNG\n", r"leaves the raw directory"),
        (",".join(MANIFEST_FIELDS) + "\n,cat,test,s1,24,24,RGB,PNG\n", r"empty path or label"),
    ],
)
def test_a_bad_manifest_is_a_precise_data_error(tmp_path, text, expected):
    with pytest.raises(DataError, match=expected):
        read_manifest(write(tmp_path, text))


def test_an_empty_split_is_refused(tmp_path):
    write(tmp_path, manifest_text([ROWS[1]]))
    with pytest.raises(DataError, match=r"the test split is empty"):
        split_rows(tmp_path, "test")
