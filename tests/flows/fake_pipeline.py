"""A working copy whose six pipeline stages are stand-ins: real `dvc repro`, real flows, no training.

For tests whose unit is how runs share a working copy, not what the stages compute: each stage notes when
it starts and ends (and in which flow run) in `stage_times.log`, waits while `hold/<stage>` exists, and
writes the outputs the flows read (data/raw for the data watch's hash; a gate that rejects, so a pipeline
run ends "gate failed, champion kept" without deploying).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from flows.dvc_stage import PIPELINE_STAGES
from tests.conftest import PROJECT_ROOT, init_git_dvc

STAGE_SCRIPT = '''"""A stand-in pipeline stage (tests/flows/fake_pipeline.py)."""
import json
import os
import sys
import time
from pathlib import Path

stage = sys.argv[1]


def note(event):
    with open("stage_times.log", "a") as log:
        log.write(f"{time.time():.6f} {stage} {event} {os.environ.get('PREFECT__FLOW_RUN_ID', 'local')}\\n")


note("start")
while Path("hold", stage).exists():
    time.sleep(0.1)
outputs = {
    "ingest": ("data/raw/source.txt", lambda: Path("raw_source.txt").read_text()),
    "prepare": ("data/prepared/manifest.csv", lambda: "path,label,split\\n"),
    "train": ("models/model.txt", lambda: "weights"),
    "evaluate": ("metrics/evaluate.json", lambda: json.dumps({"accuracy": 0.5, "per_class": {}})),
    "export": ("export/model.txt", lambda: "exported"),
    "gate": ("gate/decision.json", lambda: json.dumps({"passed": False, "reason": "a stand-in gate", "checks": []})),
}
path, content = outputs[stage]
Path(path).parent.mkdir(parents=True, exist_ok=True)
Path(path).write_text(content())
note("end")
'''
DEPS = {"ingest": "raw_source.txt", "prepare": "data/raw", "train": "data/prepared", "evaluate": "models"}
OUTS = {
    "ingest": "data/raw",
    "prepare": "data/prepared",
    "train": "models",
    "evaluate": "metrics/evaluate.json",
    "export": "export",
    "gate": "gate",
}


@dataclass(frozen=True)
class StageSpan:
    stage: str
    run: str  # the flow run's id, or "local" for a run outside a deployment
    start: float
    end: float


def fake_pipeline_repo(repo: Path) -> Path:
    """A git+DVC working copy (the project's params.yaml, stand-in stages that always run); returns it."""
    repo.mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "params.yaml", repo / "params.yaml")
    (repo / "fake_stage.py").write_text(STAGE_SCRIPT)
    (repo / "raw_source.txt").write_text("raw data v1\n")
    stages = {
        stage: {
            "cmd": f"python fake_stage.py {stage}",
            "deps": ["fake_stage.py", *([DEPS[stage]] if stage in DEPS else [])],
            "outs": [OUTS[stage]],
            "always_changed": True,
        }
        for stage in PIPELINE_STAGES
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    init_git_dvc(repo)
    return repo


def stage_spans(repo: Path) -> list[StageSpan]:
    """Every completed stage execution in the working copy, in order of start."""
    log = repo / "stage_times.log"
    events = [line.split() for line in log.read_text().splitlines()] if log.is_file() else []
    starts: dict[tuple[str, str], float] = {}
    spans = []
    for at, stage, event, run in events:
        if event == "start":
            starts[stage, run] = float(at)
        else:
            spans.append(StageSpan(stage, run, starts.pop((stage, run)), float(at)))
    return sorted(spans, key=lambda span: span.start)


def started(repo: Path, stage: str) -> int:
    """How many times `stage` has started in the working copy."""
    log = repo / "stage_times.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return sum(1 for line in lines if line.split()[1:3] == [stage, "start"])


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
