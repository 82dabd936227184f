"""A stage that fails transiently is retried; one that explains its failure (exit 2) is not."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

from flows.pipeline import stage_task
from tests.conftest import run_tool

pytestmark = pytest.mark.slow

FLAKY = """\
import sys
from pathlib import Path

attempts = Path("attempts.txt")
count = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(count))
if count < {succeed_on}:
    sys.exit({exit_code})
Path("out.txt").write_text("done")
"""


def flaky_repo(root: Path, exit_code: int, succeed_on: int) -> Path:
    repo = root / f"repo-{exit_code}"
    repo.mkdir()
    (repo / "flaky.py").write_text(FLAKY.format(exit_code=exit_code, succeed_on=succeed_on))
    (repo / "dvc.yaml").write_text(
        "stages:\n  flaky:\n    cmd: python flaky.py\n    deps: [flaky.py]\n    outs: [out.txt]\n"
    )
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_tool(args, repo)
    return repo


@flow
def run_stage(repo: str):
    return stage_task.with_options(retry_delay_seconds=0)("flaky", repo)


def test_a_crashing_stage_is_retried_until_it_succeeds(tmp_path):
    repo = flaky_repo(tmp_path, exit_code=1, succeed_on=2)  # a crash (exit 1) the first time only
    state = run_stage(str(repo), return_state=True)
    assert state.is_completed(), state.message
    assert (repo / "attempts.txt").read_text() == "2"
    assert (repo / "out.txt").read_text() == "done"


def test_an_explained_failure_is_not_retried(tmp_path):
    repo = flaky_repo(tmp_path, exit_code=2, succeed_on=99)  # exit 2: the stage said what is wrong
    state = run_stage(str(repo), return_state=True)
    assert state.is_failed()
    assert (repo / "attempts.txt").read_text() == "1"
