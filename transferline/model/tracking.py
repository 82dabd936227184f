"""Training curves through DVCLive, so `dvc plots show` and `dvc exp show` read them.

The sink starts a fresh DVCLive directory each run and replays the epochs a resumed run
already did (they travel in the checkpoint), so the curves are complete even though DVC
removed the directory before the re-run. DVCLive neither writes dvc.yaml nor saves
experiments here: the pipeline's dvc.yaml declares its files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transferline.model.training import EpochSink

log = logging.getLogger("transferline.model.tracking")

CURVES = {
    "train/loss": "train_loss",
    "train/accuracy": "train_accuracy",
    "val/loss": "val_loss",
    "val/accuracy": "val_accuracy",
    "lr": "lr",
    "images_per_s": "images_per_s",
}


class LiveSink(EpochSink):
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.live = None

    def start(self, history: list[dict]) -> None:
        self.live = _tolerant_live_class()(
            dir=str(self.directory), resume=False, save_dvc_exp=False, dvcyaml=None, report=None, monitor_system=False
        )
        for record in history:
            self.epoch(record)

    def epoch(self, record: dict) -> None:
        for name, key in CURVES.items():
            if key in record:
                self.live.log_metric(name, float(record[key]))
        self.live.next_step()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def _tolerant_live_class():
    """DVCLive whose repository probe survives a git repository without commits.

    dvclive 3.49 asks git for HEAD before checking that a commit exists, so `git init && dvc init
    && dvc repro` would crash the stage. With no commit there is no experiment to link anyway:
    the curves are still written where dvc.yaml expects them.
    """
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class TolerantLive(Live):
        def _init_dvc(self) -> None:
            try:
                super()._init_dvc()
            except SCMError as exc:
                log.warning("DVCLive cannot read the git repository (%s): curves only, no experiment link", exc)
                self._save_dvc_exp = False
                self._dvc_file = self._init_dvc_file()

    return TolerantLive
