"""Starting the data-parallel processes from the train stage itself, with torchrun's own launcher.

`python -m stages.train` with `train.distributed.nproc: N` > 1 (so `dvc repro` and the flow too) runs what
`torchrun --standalone --nproc-per-node N -m stages.train ARGS` runs: torch's elastic agent, in this process,
starts the N processes on a free loopback port, watches them, and stops them all as soon as one fails (no
hang: a survivor blocked in a collective is terminated). What this module adds: the environment every process
needs before it computes (train.reproducible's pinned math, the threads of each process), and one plain
`error:` line naming the failed process and the checkpoint a re-run resumes from, instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

from transferline.cli import USER_ERROR_EXIT
from transferline.model.reproducibility import pinning
from transferline.model.training import default_threads

log = logging.getLogger("transferline.model.launch")

STOPPED_BY_LAUNCHER = signal.SIGTERM  # how the agent stops the survivors of a failure


class ProcessesFailed(Exception):
    """A data-parallel process failed; the others were stopped. `explained`: one exited with USER_ERROR_EXIT,
    having printed why (bad params or data), so running again as it is would fail again."""

    def __init__(self, message: str, explained: bool) -> None:
        super().__init__(message)
        self.explained = explained


class LaunchInterrupted(Exception):
    """The launcher itself got a termination signal (Ctrl-C, a cancelled flow run); the processes were stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(_signal_name(signum))
        self.signum = int(signum)


def torchrun_args(module: str, args: list[str], nproc: int) -> list[str]:
    """The torchrun command line (after `torchrun`) this launch is equivalent to."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", module, *args]


def launch(module: str, args: list[str], nproc: int, env: Mapping[str, str]) -> None:
    """Run `python -m module args` in `nproc` processes under torchrun's agent; raise ProcessesFailed if one
    fails, LaunchInterrupted if this process is told to stop (the processes are stopped first).

    `env` is added to this process's environment first, so that every process starts with it.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    os.environ.update(env)
    argv = torchrun_args(module, args, nproc)
    log.info("starting %d processes: torchrun %s", nproc, " ".join(argv))
    try:
        torchrun(parse_args(argv))
    except ChildFailedError as failed:
        explained = any(failure.exitcode == USER_ERROR_EXIT for failure in failed.failures.values())
        raise ProcessesFailed(describe_failures(failed.failures), explained) from None
    except SignalException as stopped:  # torch's agent has stopped the processes already
        raise LaunchInterrupted(stopped.sigval) from None


def process_env(reproducible: bool, num_threads: int | None, nproc: int, cuda: bool) -> dict[str, str]:
    """What each of `nproc` processes on this machine needs in its environment before it computes.

    Reproducible: the pinned math, its thread count shared out (reproducibility.pinning). Otherwise the
    threads each process takes: train.num_threads, or this machine's CPUs shared out (torchrun would set 1).
    """
    pin = pinning(reproducible, num_threads, nproc)
    if pin.reproducible:
        return dict(pin.env)
    return {"OMP_NUM_THREADS": str(num_threads or default_threads(cuda, nproc))}


def describe_failures(failures: Mapping) -> str:
    """`rank 1 (pid 12) was killed by SIGKILL; rank 0 (pid 11) was stopped by the launcher (SIGTERM)`.

    `failures` maps ranks to torch's ProcessFailure (exitcode, pid). The processes that failed on their own
    come first: those the launcher stopped afterwards are the consequence, not the cause.
    """

    def stopped(failure) -> bool:
        return failure.exitcode == -STOPPED_BY_LAUNCHER

    parts = []
    for rank, failure in sorted(failures.items(), key=lambda item: (stopped(item[1]), item[1].timestamp, item[0])):
        who = f"rank {rank} (pid {failure.pid})"
        if failure.exitcode >= 0:
            parts.append(f"{who} exited with status {failure.exitcode}")
        elif stopped(failure):
            parts.append(f"{who} was stopped by the launcher (SIGTERM)")
        else:
            parts.append(f"{who} was killed by {_signal_name(-failure.exitcode)}")
    return "; ".join(parts)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
