"""Overhead of the Prefect flow over plain `dvc repro`, for a no-op run and for a full run.

No-op: in the project itself (run after `make demo`), `dvc repro` with nothing stale vs
`python -m flows.pipeline --no-deploy` (every stage skipped), the temporary Prefect server's start
included. Full run: two fresh copies of the pipeline on the same small generated data, one run by
`dvc repro`, one by the flow (without deploy). Writes bench/results/flow.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bench.common import run_tool, write_results
from transferline.env import tool_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOOP_TARGET_S = 30.0


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def small_repo(root: Path) -> Path:
    """A git+DVC copy of the pipeline on 3 generated classes x 20 images, with quick training."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "champion.json", "stages", "transferline", "serving"):  # every dvc.yaml dep
        source = PROJECT_ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, repo / name)
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        (repo / "images" / name).mkdir(parents=True)
        for item in range(20):
            pixels = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
            pixels[..., label] += 150
            Image.fromarray(pixels).save(repo / "images" / name / f"{item}.png")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"].update({"source": "folder", "path": "images", "per_class": None})
    params["preprocess"]["image_size"] = 32
    params["prepare"]["min_per_class"] = 3
    params["train"].update({"strategy": "feature_extraction"})
    params["export"].update({"parity_images": 16, "latency_seconds": 0.2, "int8": False})
    params["gate"].update({"min_accuracy": 0.5, "min_macro_f1": 0.5, "min_class_recall": 0.3, "max_latency_ms": 500})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_tool(args, repo)
    return repo


def run(quick: bool = False) -> dict:
    python = sys.executable
    flow = [python, "-m", "flows.pipeline", "--no-deploy"]
    run_tool(["dvc", "repro"], PROJECT_ROOT)  # up to date first (not timed)
    noop_dvc = timed(["dvc", "repro"], PROJECT_ROOT)
    noop_flow = timed([*flow, "--repo", str(PROJECT_ROOT)], PROJECT_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        dvc_repo = small_repo(Path(tmp) / "a")
        flow_repo = small_repo(Path(tmp) / "b")
        full_dvc = timed(["dvc", "repro"], dvc_repo)
        full_flow = timed([*flow, "--repo", str(flow_repo)], PROJECT_ROOT)
    results = {
        "noop": {"dvc_repro_s": noop_dvc, "flow_s": noop_flow, "overhead_s": noop_flow - noop_dvc},
        "full_small_data": {"dvc_repro_s": full_dvc, "flow_s": full_flow, "overhead_s": full_flow - full_dvc},
        "noop_target_s": NOOP_TARGET_S,
    }
    verdict = "met" if noop_flow <= NOOP_TARGET_S else "NOT met"
    markdown = "\n".join(
        [
            "# Prefect flow overhead over plain `dvc repro`",
            "",
            "| run | dvc repro | flow (temporary server included) | overhead |",
            "|---|---|---|---|",
            f"| no-op, default pipeline (6 stages, all skipped) | {noop_dvc:.1f} s | {noop_flow:.1f} s | "
            f"{noop_flow - noop_dvc:+.1f} s |",
            f"| full, small generated data (6 stages run) | {full_dvc:.1f} s | {full_flow:.1f} s | "
            f"{full_flow - full_dvc:+.1f} s |",
            "",
            f"No-op flow target <= {NOOP_TARGET_S:.0f} s: {verdict}. The flow runs each stage as its own "
            "`dvc repro --single-item` (one DVC start per stage) and starts Prefect's temporary server.",
            "",
        ]
    )
    write_results("flow", results, markdown)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
