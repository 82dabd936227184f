"""Atomic writes, proven by killing the writer: SIGKILL at random moments never leaves a partial artifact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PROJECT_ROOT, QUIET_ENV
from tests.faults.atomic_writer import TARGETS, read_generations, write_generation
from transferline import atomic

MID_WRITE_KILLS = 12  # kills that must land while a temporary exists (some land between writes)
MAX_KILLS = 60


def leftovers(root: Path) -> list[Path]:
    """Every temporary a writer left, wherever it is (its name hides it: `.<target>.<pid>.<random>.tmp`)."""
    return sorted(p for p in root.rglob(".*") if p.name.endswith(atomic.TEMP_SUFFIXES))


def test_a_writer_killed_at_random_moments_leaves_old_or_new_artifacts_never_partial(tmp_path):
    root = tmp_path / "artifacts"
    write_generation(root, 0)
    assert read_generations(root) == dict.fromkeys(TARGETS, 0)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.atomic_writer", str(root)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **QUIET_ENV, "PYTHONPATH": str(PROJECT_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def ask(command: str) -> str:
        server.stdin.write(command + "\n")
        server.stdin.flush()
        return server.stdout.readline().strip()

    latest = dict.fromkeys(TARGETS, 0)
    caught_mid_write = 0
    try:
        kills = 0
        while caught_mid_write < MID_WRITE_KILLS and kills < MAX_KILLS:
            kills += 1
            start = max(latest.values()) + 1  # whatever the killed writer was writing is newer than all on disk
            answer = ask(f"start {start}")
            assert answer.startswith("started "), answer
            time.sleep(rng.uniform(0.02, 0.6))
            os.kill(int(answer.split()[1]), signal.SIGKILL)
            assert ask("wait") == f"exited {-signal.SIGKILL}"
            temps = leftovers(root)
            caught_mid_write += bool(temps)
            # what a killed writer leaves is recognisably a temporary of one artifact, whose writer is gone
            assert temps == sorted(p for t in TARGETS for p in atomic.stale_temps(root / t)), temps
            found = read_generations(root)  # raises on any partial artifact
            for target, generation in found.items():
                # the complete old artifact, or a complete one from the writer just killed
                assert generation == latest[target] or generation >= start, (kills, target, generation, seed)
            latest = found
        ask("quit")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    assert caught_mid_write == MID_WRITE_KILLS, f"only {caught_mid_write} of {kills} kills hit a write (seed {seed})"
    assert min(latest.values()) > 0, f"some artifact was never rewritten: {latest} (seed {seed})"

    write_generation(root, 10_000)  # the next writes clear what the killed writers left
    assert leftovers(root) == []
    assert read_generations(root) == dict.fromkeys(TARGETS, 10_000)
