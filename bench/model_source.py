"""Which model the serving, load and inference benchmarks run: the pipeline's trained one when present.

A trained model (models/ and export/ as `dvc repro` leaves them) is what users serve, so its figures
are the ones that count. Without one (a fresh clone), a random-init MobileNetV2 of the default size
stands in (bench/synthetic_bundle.py), and every report says which of the two it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_EXPORT = PROJECT_ROOT / "export"
PIPELINE_MODELS = PROJECT_ROOT / "models"
EXPORT_FILES = ("model.onnx", "preprocess.json", "classes.json", "export_report.json")
SYNTHETIC_IMAGE_SIZE = 96
SYNTHETIC_CLASSES = 10


@dataclass(frozen=True)
class ModelSource:
    """A model bundle on disk (the export stage's layout) and what it is."""

    kind: str  # "trained" (the pipeline's export) or "synthetic" (random init)
    description: str
    export_dir: Path
    image_size: int
    classes: int

    def to_dict(self) -> dict:
        """For a results file: the bundle's folder relative to the project, never a machine's own path."""
        inside = self.export_dir.resolve().is_relative_to(PROJECT_ROOT)
        where = str(self.export_dir.resolve().relative_to(PROJECT_ROOT)) if inside else "a temporary folder"
        return {**asdict(self), "export_dir": where}


def trained_model_present(export_dir: Path = PIPELINE_EXPORT, models_dir: Path = PIPELINE_MODELS) -> bool:
    return (models_dir / "model.json").is_file() and all((export_dir / name).is_file() for name in EXPORT_FILES)


def describe_export(export_dir: Path, kind: str, description: str) -> ModelSource:
    spec = json.loads((export_dir / "preprocess.json").read_text())
    classes = json.loads((export_dir / "classes.json").read_text())["classes"]
    return ModelSource(kind, description, export_dir, int(spec["image_size"]), len(classes))


def trained_source() -> ModelSource:
    meta = json.loads((PIPELINE_MODELS / "model.json").read_text())
    lineage = meta.get("lineage", {})
    description = (
        f"trained by the pipeline: {meta.get('backbone')} ({meta.get('strategy')}), "
        f"data version {str(lineage.get('data_version', meta.get('data_version', 'unknown')))[:12]}"
    )
    return describe_export(PIPELINE_EXPORT, "trained", description)


def synthetic_source(work: Path) -> ModelSource:
    """Write the random-init stand-in's export directory under `work` (in a subprocess: torch stays out of here)."""
    script = (
        "from pathlib import Path\n"
        "from bench.synthetic_bundle import mobilenet_v2, write_export_dir\n"
        f"classes = [f'class_{{i}}' for i in range({SYNTHETIC_CLASSES})]\n"
        f"write_export_dir(mobilenet_v2({SYNTHETIC_CLASSES}), classes, {SYNTHETIC_IMAGE_SIZE}, "
        f"Path({str(work / 'export')!r}))\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=quiet_env(), check=True, capture_output=True)
    return describe_export(
        work / "export", "synthetic", "synthetic: random-init MobileNetV2 (no trained model in models/ + export/)"
    )


def champion_source() -> ModelSource | None:
    """The registry's champion in the BentoML store ($BENTOML_HOME), when there is one: its bundle directory has
    the export stage's layout, so it can be registered again in a benchmark's throwaway store."""
    from serving.registry import find_champion

    champion = find_champion()
    if champion is None or not all((champion.path / name).is_file() for name in EXPORT_FILES):
        return None
    description = f"the registry's champion {champion.tag}, data version {champion.metadata.get('data_version')}"
    return describe_export(champion.path, "trained", description)


def model_source(work: Path) -> ModelSource:
    """The pipeline's trained model when models/ and export/ hold one, else the synthetic stand-in."""
    return trained_source() if trained_model_present() else synthetic_source(work)


def quiet_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", **extra}


def build_store(home: Path, source: ModelSource, work: Path) -> str:
    """Register and promote `source` in a throwaway BentoML home; returns its tag.

    The gate decision is a stand-in marked as the benchmark's: the benchmark measures serving speed,
    and the pipeline's own gate/ may be absent or stale.
    """
    script = (
        "from pathlib import Path\n"
        "from bench.synthetic_bundle import write_gate_dir\n"
        "from serving.registry import register, promote\n"
        f"lineage = {{'git_commit': 'bench', 'data_version': 'bench-{source.kind}'}}\n"
        f"write_gate_dir(Path({str(work / 'gate')!r}), True, lineage)\n"
        f"print(promote(register(Path({str(source.export_dir)!r}), Path({str(work / 'gate')!r}), lineage), "
        f"project=Path({str(work)!r})))\n"
    )
    return run_in_store(script, home)


def run_in_store(script: str, home: Path) -> str:
    """Run `script` in a Python process on the BentoML store at `home`; its last line of output."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=quiet_env(BENTOML_HOME=str(home)),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]
