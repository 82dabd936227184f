"""Shared fixtures: small image trees made on the fly, and throwaway git+DVC repositories."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferline.env import QUIET_ENV, tool_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "champion.json", "stages", "transferline", "serving")
os.environ.update(QUIET_ENV)


# `make test` runs two pytest-xdist workers, and a work unit goes to one worker whole: a test file (its tests
# share module fixtures and run in order), or all the files that use one of these session-scoped started
# engines, so each engine starts once per `make test`, not once per worker. Kept true by
# tests/test_worker_groups.py.
SHARED_ENGINES = {"prefect_server": "prefect-server", "trained_tiny_pipeline": "prefect-server", "cluster": "cluster"}
ENGINE_FILES = {
    "tests/cluster/test_cluster.py": "cluster",
    "tests/faults/test_flow_kill.py": "prefect-server",
    "tests/flows/test_data_watch_trigger.py": "prefect-server",
    "tests/flows/test_prefect_server.py": "prefect-server",
    "tests/flows/test_working_copy_lock.py": "prefect-server",
    "tests/serving/test_trained_model_parity.py": "prefect-server",
}


def work_unit(nodeid: str) -> str:
    """The work unit of a test (see ENGINE_FILES): its engine's group, else its file."""
    test_file = nodeid.split("::")[0]
    return ENGINE_FILES.get(test_file, test_file)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scheduling by scope, with `work_unit` as the scope."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """A Prefect home of this test process's own: flows run in-process start Prefect's temporary server on
    its SQLite file, and two workers (or a developer's own runs) must not share one."""
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="transferline-test-prefect-")


@pytest.fixture(scope="session", autouse=True)
def stop_prefect_temporary_server():
    """Prefect stops the temporary server of in-process flow runs at interpreter exit, when pytest has
    already closed the stream its logger writes to; stop it here, while that stream is open."""
    yield
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is not None:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the last flow-run logs while the server still listens
        for server in list(server_module.SubprocessASGIServer._instances.values()):
            server.stop()


@contextlib.contextmanager
def bentoml_home_in_process(home: Path) -> Iterator[None]:
    """BENTOML_HOME for this process's own BentoML calls as well as its subprocesses'. BentoML resolves its
    home, and the stores under it, once per process and keeps them: setting the variable after another
    test of this worker used BentoML would reach the subprocesses only, so the stores are re-pointed too."""
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    folders = {name: home / name for name in ("bentos", "models", "envs", "tmp")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    overrides = {
        BentoMLContainer.bentoml_home: str(home),
        BentoMLContainer.bento_store_dir: str(folders["bentos"]),
        BentoMLContainer.model_store_dir: str(folders["models"]),
        BentoMLContainer.env_store_dir: str(folders["envs"]),
        BentoMLContainer.tmp_bento_store_dir: str(folders["tmp"]),
        BentoMLContainer.bento_store: BentoStore(str(folders["bentos"])),
        BentoMLContainer.tmp_bento_store: BentoStore(str(folders["tmp"])),
        BentoMLContainer.model_store: ModelStore(str(folders["models"])),
    }
    saved = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        with contextlib.ExitStack() as stack:
            for provider, value in overrides.items():
                stack.enter_context(provider.patch(value))
            yield
    finally:
        if saved is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = saved


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def class_image(label_index: int, item: int, size: int = 24) -> np.ndarray:
    """A distinct RGB image per (class, item): a class-specific colour plus seeded noise."""
    rng = np.random.default_rng(label_index * 10_000 + item)
    base = np.zeros((size, size, 3), dtype=np.int16)
    base[..., label_index % 3] = 120 + 40 * (label_index // 3)
    noise = rng.integers(-40, 40, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_foreign_images(root: Path, count: int = 6, size: int = 24) -> None:
    """Images of none of the tiny classes (smooth random colour fields), for the export's OOD check."""
    from transferline.monitoring.shifts import noise_images

    root.mkdir(parents=True, exist_ok=True)
    for index, pixels in enumerate(noise_images(count, size, seed=11)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (root / f"foreign_{index}.png").write_bytes(buffer.getvalue())


def write_class_images(root: Path, classes: dict[str, int], size: int = 24) -> None:
    """`<root>/<class>/img_<i>.png`, `count` distinct images per class (see class_image)."""
    for label_index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            (root / name / f"img_{item:03d}.png").write_bytes(png_bytes(class_image(label_index, item, size)))


@pytest.fixture
def image_tree(tmp_path: Path) -> Callable[..., Path]:
    """Write `<root>/<class>/img_<i>.png` for the given classes; returns the root."""

    def make(classes: dict[str, int] | None = None, root: Path | None = None, size: int = 24) -> Path:
        root = root or tmp_path / "images"
        write_class_images(root, classes or {"cat": 12, "dog": 12, "fox": 12}, size)
        return root

    return make


def run_tool(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a real command-line tool with the project's venv first on PATH (and `env` added)."""
    result = subprocess.run(args, cwd=cwd, env={**tool_env(), **(env or {})}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A fresh git+DVC repository holding a copy of the pipeline's code, dvc.yaml and params.yaml."""
    repo = tmp_path / "repo"
    copy_pipeline(repo)
    init_git_dvc(repo)
    return repo


def copy_pipeline(repo: Path) -> None:
    """The pipeline's code, dvc.yaml and params.yaml, copied into `repo` (created)."""
    repo.mkdir(parents=True)
    for name in PIPELINE_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, repo / name)


def init_git_dvc(repo: Path) -> None:
    run_tool(["git", "init", "-q"], repo)
    run_tool(["git", "config", "user.email", "test@example.invalid"], repo)
    run_tool(["git", "config", "user.name", "test"], repo)
    run_tool(["dvc", "init", "-q"], repo)
    run_tool(["dvc", "config", "core.analytics", "false"], repo)


TINY_PIPELINE_PARAMS = {
    "ingest": {"source": "folder", "path": "images", "per_class": None},
    "preprocess": {"image_size": 32},
    "prepare": {"min_per_class": 3},
    "train": {"strategy": "feature_extraction", "epochs": 2, "batch_size": 16},
    "export": {"parity_images": 16, "latency_seconds": 0.2, "int8": False, "ood_dir": "ood"},
    # min_ood_auroc 0: a head fitted on 48 tiny synthetic images is more confident on noise than on its own
    # test images (AUROC ~0.02), so its OOD flag cannot pass the real bound; the gate's check is tested on its own
    "gate": {
        "min_accuracy": 0.6,
        "min_macro_f1": 0.5,
        "min_class_recall": 0.3,
        "max_latency_ms": 500,
        "min_ood_auroc": 0.0,
    },
}


def tiny_pipeline_repo(repo: Path, **sections: dict) -> Path:
    """A git+DVC copy of the pipeline on 3 classes x 16 tiny images, with fast (still real) training and
    export; `sections` add to TINY_PIPELINE_PARAMS."""
    copy_pipeline(repo)
    write_class_images(repo / "images", {"cat": 16, "dog": 16, "fox": 16})
    write_foreign_images(repo / "ood")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in {**TINY_PIPELINE_PARAMS, **sections}.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_git_dvc(repo)
    return repo


@pytest.fixture(scope="session")
def trained_tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny_pipeline_repo after one uninterrupted `dvc repro` of every stage, with no champion to compare
    against (an empty BentoML home). Built once per session and shared: read it, never change it."""
    root = tmp_path_factory.mktemp("trained-tiny-pipeline")
    repo = tiny_pipeline_repo(root / "repo")
    run_tool(["dvc", "repro"], repo, env={"BENTOML_HOME": str(root / "bentoml")})
    return repo
