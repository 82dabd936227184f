"""Model registry on the BentoML model store, with one explicit champion.

A model is saved only if its gate passed. Which model is the champion is a small JSON pointer
beside the store (`$BENTOML_HOME/transferline/champion.json`) holding the current tag and the
history of promotions, changed atomically under a file lock, so promote and rollback are single
renames and concurrent commands cannot interleave.

The gate judges a candidate against the champion, so the champion is one of its inputs: promote and
rollback also write the project's `champion.json` (the tag and the export md5 it was registered with, or
`"champion": null` before the first promotion), which dvc.yaml lists as a dependency of the gate stage.
A change of champion then re-runs the gate, and nothing else does. The file mirrors the pointer above;
`sync` rewrites it from the pointer when another checkout promoted a model.

The CLI's promote and rollback also swap the running service (the one at the serve settings' address,
if it uses this model store) to the new champion, without a restart (serving/swap_client.py);
`--no-swap` leaves it alone.

CLI: python -m serving.registry list | register | promote TAG | rollback | champion | sync
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from transferline import atomic
from transferline.cli import add_command, cli_parser, run_command
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import TransferlineError

MODEL_NAME = "transferline-classifier"
CHAMPION_FILE = Path("champion.json")  # relative to the project root; a dvc dep of the gate stage
NO_CHAMPION_RECORD = {"champion": None, "export_md5": None}
BUNDLE_FILES = ("model.onnx", "preprocess.json", "classes.json", "export_report.json")
OPTIONAL_FILES = (  # bundles made before the OOD flag, or before the feature distance, lack them
    "model.int8.onnx",
    "monitoring.json",
    "reference_logits.npy",
    "reference_distances.npy",
)


class RegistryError(TransferlineError):
    """A registry command that cannot be carried out (unknown tag, failed gate, no history)."""


@dataclass(frozen=True)
class Champion:
    """What the gate and the service need to know about the model currently served."""

    tag: str
    path: Path  # directory holding model.onnx, preprocess.json, classes.json, ...
    classes: list[str]
    preprocess: PreprocessSpec
    metadata: dict

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"


def bentoml_home() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


def pointer_file() -> Path:
    return bentoml_home() / "transferline" / "champion.json"


@contextlib.contextmanager
def locked_pointer() -> Iterator[dict]:
    """Read-modify-write the champion pointer under an exclusive lock; written atomically on exit."""
    path = pointer_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_pointer()
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            atomic.write_json(path, state)


def read_pointer() -> dict:
    path = pointer_file()
    if not path.is_file():
        return {"champion": None, "history": []}
    return json.loads(path.read_text())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def register(export_dir: Path, gate_dir: Path, lineage: dict) -> str:
    """Save an exported, gate-passed model into the BentoML store; returns its tag."""
    import bentoml

    decision = json.loads((gate_dir / "decision.json").read_text())
    if not decision.get("passed"):
        raise RegistryError(f"refusing to register a model whose gate failed: {decision.get('reason')}")
    missing = [name for name in BUNDLE_FILES if not (export_dir / name).is_file()]
    if missing:
        raise RegistryError(f"export directory {export_dir} lacks {', '.join(missing)}: run the export stage")
    report = json.loads((export_dir / "export_report.json").read_text())
    labels = {
        "gate": "passed",
        "data_version": str(lineage.get("data_version", "unknown")),
        "git_commit": str(lineage.get("git_commit", "unknown"))[:12],
    }
    metadata = _without_none(
        {
            **lineage,
            "gate_decision": decision,
            "metrics": decision.get("metrics", {}),
            "onnx_opset": report.get("opset"),
            "registered_at": _now(),
        }
    )
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        target = Path(model.path)
        for name in (*BUNDLE_FILES, *OPTIONAL_FILES):
            if (export_dir / name).is_file():
                shutil.copyfile(export_dir / name, target / name)
        for name in ("decision.json", "model_card.md"):
            if (gate_dir / name).is_file():
                shutil.copyfile(gate_dir / name, target / name)
    return str(model.tag)


def _without_none(value):
    """BentoML refuses None in model metadata (a first model's decision has `"champion": null`, n/a checks
    have null values): drop those entries; decision.json, copied beside the model, keeps them."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value if item is not None]
    return value


def _get(tag: str):
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound:
        raise RegistryError(f"no model {tag!r} in the BentoML model store (see `list`)") from None


def champion_record(tag: str | None) -> dict:
    """What identifies a champion for the gate: its tag and the DVC md5 of the export it was registered from."""
    if tag is None:
        return dict(NO_CHAMPION_RECORD)
    return {"champion": tag, "export_md5": _get(tag).info.metadata.get("export_md5")}


def read_champion_file(project: Path = Path(".")) -> dict:
    """The project's champion.json; RegistryError when it is missing or not what `write_champion_file` writes."""
    path = project / CHAMPION_FILE
    if not path.is_file():
        raise RegistryError(
            f"{path} does not exist: it is part of the project (the gate stage depends on it); restore it with "
            "`git checkout -- champion.json` or write it with `python -m serving.registry sync`"
        )
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    if not isinstance(record, dict) or set(record) != set(NO_CHAMPION_RECORD):
        raise RegistryError(
            f"{path} is not a champion record ({{'champion': TAG or null, 'export_md5': ...}}): "
            "rewrite it with `python -m serving.registry sync`"
        )
    return record


def write_champion_file(project: Path, tag: str | None) -> bool:
    """Write the champion record atomically, only when it changed (so DVC sees a change only then)."""
    path = project / CHAMPION_FILE
    record = champion_record(tag)
    if path.is_file():
        with contextlib.suppress(ValueError):
            if json.loads(path.read_text()) == record:
                return False
    atomic.write_json(path, record)
    return True


def sync_champion_file(project: Path = Path(".")) -> bool:
    """Make the project's champion.json name the registry's current champion; True if it changed."""
    return write_champion_file(project, read_pointer()["champion"])


def promote(tag: str, project: Path = Path(".")) -> str:
    """Make `tag` the champion and record it in `project`'s champion.json; refuses a model whose gate did not pass."""
    model = _get(tag)
    decision = model.info.metadata.get("gate_decision", {})
    if not decision.get("passed"):
        raise RegistryError(f"refusing to promote {model.tag}: its gate did not pass")
    tag = str(model.tag)
    with locked_pointer() as state:
        if state["champion"] != tag:
            state["history"].append({"tag": tag, "previous": state["champion"], "at": _now()})
            state["champion"] = tag
        write_champion_file(project, tag)
    return tag


def rollback(project: Path = Path(".")) -> str:
    """Restore the champion that preceded the current one, in the registry and in `project`'s champion.json."""
    with locked_pointer() as state:
        if not state["history"] or state["history"][-1]["previous"] is None:
            raise RegistryError("nothing to roll back to: no earlier champion in the history")
        last = state["history"].pop()
        state["champion"] = last["previous"]
        write_champion_file(project, state["champion"])
        return state["champion"]


def find_champion() -> Champion | None:
    """The gate's and the service's single lookup of the model currently promoted, if any."""
    tag = read_pointer()["champion"]
    return None if tag is None else bundle(tag)


def bundle(tag: str) -> Champion:
    """A registered model's files, classes, preprocessing and lineage."""
    model = _get(tag)
    path = Path(model.path)
    return Champion(
        tag=str(model.tag),
        path=path,
        classes=json.loads((path / "classes.json").read_text())["classes"],
        preprocess=PreprocessSpec.from_dict(json.loads((path / "preprocess.json").read_text())),
        metadata=dict(model.info.metadata),
    )


def list_models() -> list[dict]:
    import bentoml

    champion = read_pointer()["champion"]
    rows = []
    for model in sorted(bentoml.models.list(MODEL_NAME), key=lambda m: m.info.creation_time):
        metadata = model.info.metadata
        rows.append(
            {
                "tag": str(model.tag),
                "champion": str(model.tag) == champion,
                "created": model.info.creation_time.isoformat(timespec="seconds"),
                "data_version": metadata.get("data_version"),
                "accuracy": metadata.get("gate_decision", {}).get("metrics", {}).get("accuracy"),
            }
        )
    return rows


def _list_command(args: argparse.Namespace) -> None:
    for row in list_models():
        marker = "*" if row["champion"] else " "
        print(
            f"{marker} {row['tag']}  created {row['created']}  data {row['data_version']}  accuracy {row['accuracy']}"
        )


def _champion_command(args: argparse.Namespace) -> None:
    champion = find_champion()
    print(champion.tag if champion else "none")


def _register_command(args: argparse.Namespace) -> None:
    from transferline.evaluation.lineage import collect_lineage

    tag = register(args.export_dir, args.gate_dir, collect_lineage(Path.cwd()))
    print(tag)
    if args.promote:
        promote(tag, args.project)
        print(f"champion: {tag}")
        _follow(tag, args)


def _promote_command(args: argparse.Namespace) -> None:
    tag = promote(args.tag, args.project)
    print(f"champion: {tag}")
    _follow(tag, args)


def _rollback_command(args: argparse.Namespace) -> None:
    tag = rollback(args.project)
    print(f"champion: {tag}")
    _follow(tag, args)


def _follow(tag: str, args: argparse.Namespace) -> None:
    """The running service follows the registry: swapped to the new champion, unless --no-swap."""
    if args.no_swap:
        return
    from serving.swap_client import follow_champion, local_service_url

    print(follow_champion(tag, args.service_url or local_service_url(args.project), bentoml_home()))


def _sync_command(args: argparse.Namespace) -> None:
    changed = sync_champion_file(args.project)
    print(f"{CHAMPION_FILE}: {'updated' if changed else 'already current'}")


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("transferline model registry (BentoML model store)")
    parser.add_argument(
        "--project",
        type=Path,
        default=Path("."),
        help=f"project whose {CHAMPION_FILE} promote, rollback and sync write (default: the current directory)",
    )
    parser.add_argument(
        "--service-url",
        help="the running service promote and rollback swap (default: the address of the serve settings)",
    )
    parser.add_argument("--no-swap", action="store_true", help="promote or roll back without swapping the service")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command(commands, "list", _list_command, "registered models, the champion marked")
    add_command(commands, "champion", _champion_command, "print the champion's tag")
    register_cmd = add_command(commands, "register", _register_command, "save the exported, gate-passed model")
    register_cmd.add_argument("--export-dir", type=Path, default=Path("export"))
    register_cmd.add_argument("--gate-dir", type=Path, default=Path("gate"))
    register_cmd.add_argument("--promote", action="store_true", help="also make it the champion")
    promote_cmd = add_command(commands, "promote", _promote_command, "make TAG the champion")
    promote_cmd.add_argument("tag")
    add_command(commands, "rollback", _rollback_command, "restore the previous champion")
    add_command(commands, "sync", _sync_command, f"rewrite {CHAMPION_FILE} from the registry's champion")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(None, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
