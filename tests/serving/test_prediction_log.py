"""The prediction log: lines written off the caller's thread, rotation within its size bound, a torn
line skipped, and the summary's counts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from serving.prediction_log import PredictionLog, format_summary, read_entries, summarize


def entry(i: int, label: str = "cat", ood: bool = False, tag: str = "m:1") -> dict:
    return {
        "time": 1000.0 + i,
        "model_tag": tag,
        "labels": [label, "dog"],
        "probabilities": [0.9, 0.1],
        "ood_score": -3.0,
        "out_of_distribution": ood,
        "embedding": [0.1] * 16,
        "request_bytes": 1234,
    }


def test_entries_are_written_and_read_back(tmp_path: Path):
    log = PredictionLog(tmp_path, max_bytes=1_000_000, backups=2)
    log.start()
    for i in range(50):
        log.record(entry(i))
    log.flush()
    entries = list(read_entries(tmp_path))
    assert [e["time"] for e in entries] == [1000.0 + i for i in range(50)]
    assert log.dropped == 0
    log.close()


def test_rotation_bounds_the_disk_use(tmp_path: Path):
    size = len(json.dumps(entry(0), separators=(",", ":"))) + 1
    log = PredictionLog(tmp_path, max_bytes=size * 10, backups=2)
    log.start()
    for i in range(100):
        log.record(entry(i))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3  # the current file and two backups
    assert all(p.stat().st_size <= size * 10 for p in tmp_path.iterdir())
    kept = [e["time"] for e in read_entries(tmp_path)]
    assert kept == sorted(kept) and kept[-1] == 1099.0 and len(kept) == 30  # the newest 30 lines survive


def test_a_torn_last_line_is_skipped(tmp_path: Path):
    path = tmp_path / "predictions-1.jsonl"
    path.write_text(json.dumps(entry(0)) + "\n" + '{"time": 10')
    assert len(list(read_entries(tmp_path))) == 1


def test_recording_never_blocks_when_the_writer_is_not_running(tmp_path: Path):
    log = PredictionLog(tmp_path, max_bytes=1000, backups=1)  # not started: the queue only fills
    start = time.perf_counter()
    for i in range(10_050):
        log.record(entry(i))
    assert time.perf_counter() - start < 5
    assert log.dropped == 50


def test_the_summary_counts_per_model_in_a_window():
    entries = [entry(i, "cat") for i in range(6)] + [entry(10 + i, "dog", ood=i < 2, tag="m:2") for i in range(4)]
    summary = summarize(entries, since=1003.0)
    assert summary["predictions"] == 7
    assert summary["models"]["m:1"] == {"predictions": 3, "ood": 0, "ood_rate": 0.0, "class_mix": {"cat": 1.0}}
    assert summary["models"]["m:2"]["ood_rate"] == 0.5
    text = format_summary(summary)
    assert "7 predictions" in text and "m:2: 4 predictions, OOD 50.0%; dog 100%" in text
    assert format_summary(summarize([], None)) == "no predictions in this window"
