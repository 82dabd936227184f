"""Overhead of the Prefect flow over plain `dvc repro`, for a no-op run and for a full run.

No-op: in the project itself (run after `make demo`), `dvc repro` with nothing stale vs
`python -m flows.pipeline --no-deploy` (every stage skipped), the temporary Prefect server's start
included. Full run: two fresh copies of the pipeline on the same small generated data, one run by
`dvc repro`, one by the flow (without deploy). Both pairs run once untimed (warm caches), then
alternate: NOOP_REPEATS rounds for the no-op pair, FULL_REPEATS for the full pair (fresh copies each
time; one round in quick mode); each figure is the median with its range.
Writes bench/results/flow.{json,md}.
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

from bench.common import interleaved, run_tool, write_results
from transferline.env import tool_env
from transferline.monitoring.shifts import noise_images

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOOP_TARGET_S = 30.0
NOOP_REPEATS = 3
FULL_REPEATS = 3


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
    # the export's OOD calibration needs foreign images (a declared dep): smooth random colour fields. A head
    # fitted on 60 tiny images cannot pass the real OOD bound, so the gate does not check it here.
    (repo / "ood").mkdir()
    for index, pixels in enumerate(noise_images(6, 24, seed=11)):
        Image.fromarray(pixels).save(repo / "ood" / f"foreign_{index}.png")
    params["export"].update({"parity_images": 16, "latency_seconds": 0.2, "int8": False, "ood_dir": "ood"})
    params["gate"].update(
        {"min_accuracy": 0.5, "min_macro_f1": 0.5, "min_class_recall": 0.3, "max_latency_ms": 500, "min_ood_auroc": 0.0}
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_tool(args, repo)
    return repo


def run(quick: bool = False) -> dict:
    python = sys.executable
    flow = [python, "-m", "flows.pipeline", "--no-deploy"]
    run_tool(["dvc", "repro"], PROJECT_ROOT)  # up to date first (not timed)
    noop_cells = {
        "dvc_repro_s": lambda: timed(["dvc", "repro"], PROJECT_ROOT),
        "flow_s": lambda: timed([*flow, "--repo", str(PROJECT_ROOT)], PROJECT_ROOT),
    }
    for cell in noop_cells.values():  # warm: imports and the Prefect server's files in the page cache
        cell()
    noop = interleaved(noop_cells, NOOP_REPEATS)
    with tempfile.TemporaryDirectory() as tmp:
        copies = iter(range(1000))

        def full_dvc() -> float:
            return timed(["dvc", "repro"], small_repo(Path(tmp) / f"dvc-{next(copies)}"))

        def full_flow() -> float:
            return timed([*flow, "--repo", str(small_repo(Path(tmp) / f"flow-{next(copies)}"))], PROJECT_ROOT)

        full_cells = {"dvc_repro_s": full_dvc, "flow_s": full_flow}
        if not quick:
            for cell in full_cells.values():
                cell()
        full = interleaved(full_cells, 1 if quick else FULL_REPEATS)
    noop_dvc, noop_flow = noop["dvc_repro_s"]["median"], noop["flow_s"]["median"]
    full_dvc_s, full_flow_s = full["dvc_repro_s"]["median"], full["flow_s"]["median"]
    results = {
        "noop": {"dvc_repro_s": noop_dvc, "flow_s": noop_flow, "overhead_s": noop_flow - noop_dvc, "spread": noop},
        "full_small_data": {
            "dvc_repro_s": full_dvc_s,
            "flow_s": full_flow_s,
            "overhead_s": full_flow_s - full_dvc_s,
            "spread": full,
        },
        "noop_target_s": NOOP_TARGET_S,
    }

    def cell(found: dict) -> str:
        return f"{found['median']:.1f} s ({found['min']:.1f}-{found['max']:.1f})"

    verdict = "met" if noop_flow <= NOOP_TARGET_S else "NOT met"
    markdown = "\n".join(
        [
            "# Prefect flow overhead over plain `dvc repro`",
            "",
            f"Median of interleaved runs after a warm-up (range in brackets): {NOOP_REPEATS} no-op rounds, "
            f"{len(full['flow_s']['values'])} full round(s).",
            "",
            "| run | dvc repro | flow (temporary server included) | overhead |",
            "|---|---|---|---|",
            f"| no-op, default pipeline (6 stages, all skipped) | {cell(noop['dvc_repro_s'])} | "
            f"{cell(noop['flow_s'])} | {noop_flow - noop_dvc:+.1f} s |",
            f"| full, small generated data (6 stages run) | {cell(full['dvc_repro_s'])} | {cell(full['flow_s'])} | "
            f"{full_flow_s - full_dvc_s:+.1f} s |",
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
