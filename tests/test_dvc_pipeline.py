"""The data stages through real `dvc repro` in a throwaway git+DVC repository."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run_tool
from transferline.data import elpv
from transferline.evaluation import gallery

pytestmark = pytest.mark.slow


def set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def repro(repo: Path) -> str:
    result = run_tool(["dvc", "repro", "ingest", "prepare"], repo)
    return result.stdout + result.stderr


def ran(output: str) -> set[str]:
    return {stage for stage in ("ingest", "prepare") if f"Running stage '{stage}'" in output}


@pytest.fixture
def folder_repo(dvc_repo, image_tree):
    image_tree({"cat": 12, "dog": 12, "fox": 12}, root=dvc_repo / "images")
    set_params(
        dvc_repo,
        ingest={"source": "folder", "path": "images", "per_class": None},
        preprocess={"image_size": 16},
        prepare={"min_per_class": 3},
    )
    return dvc_repo


def test_repro_runs_once_then_skips_then_reruns_only_what_changed(folder_repo):
    repo = folder_repo
    assert ran(repro(repo)) == {"ingest", "prepare"}
    assert (repo / "data" / "raw" / "fox" / "img_011.png").is_file()
    assert (repo / "data" / "prepared" / "cache" / "train_images.npy").is_file()
    metrics = json.loads((repo / "metrics" / "prepare.json").read_text())
    assert metrics["usable"] == 36
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest", "prepare"}

    second = repro(repo)
    assert ran(second) == set()
    assert "Stage 'prepare' didn't change, skipping" in second

    set_params(repo, prepare={"seed": 5})
    assert ran(repro(repo)) == {"prepare"}
    set_params(repo, preprocess={"image_size": 20})
    assert ran(repro(repo)) == {"prepare"}

    (repo / "images" / "dog" / "new.png").write_bytes((repo / "images" / "cat" / "img_000.png").read_bytes())
    assert ran(repro(repo)) == {"ingest", "prepare"}  # new raw data re-runs everything downstream
    report = json.loads((repo / "data" / "prepared" / "quarantine.json").read_text())
    assert len(report["duplicates_removed"]) == 2  # the copy conflicts with its original's label
    status = run_tool(["dvc", "status", "ingest", "prepare"], repo).stdout
    assert "up to date" in status


def test_bad_params_stop_the_stage_with_a_message_not_a_traceback(folder_repo):
    set_params(folder_repo, prepare={"val_fraction": 2})
    result = run_tool(["dvc", "repro", "prepare"], folder_repo, check=False)
    assert result.returncode != 0
    assert "error: invalid params: prepare.val_fraction: Input should be less than 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_cli_reports_unusable_data_clearly(folder_repo):
    run_tool(["dvc", "repro", "ingest"], folder_repo)
    for i in range(5):
        (folder_repo / "data" / "raw" / "cat" / f"junk_{i}.png").write_bytes(b"\x89PNG broken")
    result = run_tool(["python", "-m", "stages.prepare"], folder_repo, check=False)
    assert result.returncode == 2
    assert "error: 5 of 41 files (12.2%) are unusable, above prepare.max_bad_fraction=0.05" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (folder_repo / "data" / "prepared").exists()


def test_default_fashion_mnist_source(dvc_repo):
    data_dir = PROJECT_ROOT / "data" / "external" / "fashion-mnist"
    assert data_dir.is_dir(), "run `make assets` first (make test does)"
    set_params(
        dvc_repo,
        ingest={"path": str(data_dir), "per_class": 6},
        preprocess={"image_size": 32},
        prepare={"min_per_class": 3},
    )
    repro(dvc_repo)
    metrics = json.loads((dvc_repo / "metrics" / "prepare.json").read_text())
    assert metrics["classes"] == 10 and metrics["files"] == 60
    assert metrics["splits"]["test"]["per_class"]["ankle_boot"] == 1
    assert metrics["splits"]["train"]["image_size"]["modes"] == {"L": metrics["splits"]["train"]["total"]}


def test_elpv_source_through_dvc(dvc_repo):
    set_params(
        dvc_repo,
        ingest={"source": "elpv", "path": str(elpv.packaged_dir()), "per_class": 5, "task": "defect_level"},
        preprocess={"image_size": 32},
        prepare={"min_per_class": 3},
    )
    assert ran(repro(dvc_repo)) == {"ingest", "prepare"}
    metrics = json.loads((dvc_repo / "metrics" / "prepare.json").read_text())
    assert metrics["files"] == 20 and metrics["usable"] == 20
    assert set(metrics["splits"]["test"]["per_class"]) == {"defect_000", "defect_033", "defect_067", "defect_100"}
    assert metrics["splits"]["train"]["image_size"]["modes"] == {"L": metrics["splits"]["train"]["total"]}
    assert (dvc_repo / "data" / "raw" / "elpv_cells.csv").is_file()
    assert ran(repro(dvc_repo)) == set()


def test_confident_errors_gallery_is_a_dvc_image_plot(dvc_repo):
    sheet = gallery.render(np.zeros((1, 8, 8, 3), np.uint8), [], 0, 1)
    (dvc_repo / "plots" / "evaluate").mkdir(parents=True)
    (dvc_repo / "plots" / "evaluate" / "confident_errors.png").write_bytes(sheet)
    shown = json.loads(run_tool(["dvc", "plots", "show", "--json"], dvc_repo, check=False).stdout)
    (entry,) = shown["data"]["plots/evaluate/confident_errors.png"]
    assert entry["type"] == "image" and Path(entry["url"]).read_bytes() == sheet
