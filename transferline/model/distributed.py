"""Data-parallel training (DDP): which of torchrun's processes this is, its process group, and the few
collectives the training loop needs.

How a global batch of B images is shared out over N processes: every process draws the permutation and the
augmentation parameters that one process would draw (same seed, same generator, in step), and process r keeps
rows r, r+N, r+2N, ... of each global batch (the interleaving torch's DistributedSampler uses), B/N images.
torch's DistributedSampler itself is not used: it draws its own per-epoch permutation and shards the whole
epoch, so N processes would see other batches than one process, and the result would depend on N. Here,
with BatchNorm, dropout and stochastic depth seeing the global batch (global_batch.py) and DDP averaging the
gradients, N processes train the model one process trains, to float rounding, and a checkpoint written under
one process count resumes under another (unless train.distributed.batchnorm is per_process).

Rank 0 alone writes (model, metrics, DVCLive curves, checkpoints) and reads the checkpoint, which it
broadcasts: only rank 0's machine needs checkpoints/ and models/; every machine needs data/prepared.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from transferline.config import TrainParams
from transferline.errors import ParamsError

log = logging.getLogger("transferline.model.distributed")

# What torchrun sets in each process it starts (torch.distributed.run)
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        """The one process that writes outputs and reads the checkpoint."""
        return self.rank == 0

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (all of them in one process)."""
        return index[self.rank :: self.world_size] if self.distributed else index

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over every process (in place; unchanged in one process)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, by rank, on every process."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} (local {self.local_rank} of {self.local_world_size})"


SINGLE = Ranks()


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True in a process that torchrun (or the stage's own launcher) started."""
    return "WORLD_SIZE" in (os.environ if environ is None else environ)


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """This process's ranks as torchrun set them; one process when it did not start this one."""
    environ = os.environ if environ is None else environ
    if not launched_by_torchrun(environ):
        return SINGLE
    missing = [key for key in ENV_KEYS if key not in environ]
    if missing:
        raise ParamsError(f"WORLD_SIZE is set but not {', '.join(missing)}: start the stage with torchrun")
    return Ranks(*(int(environ[key]) for key in ENV_KEYS))


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto`: NCCL on CUDA, gloo on CPU; NCCL asked for on a CPU is a params error."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ParamsError("train.distributed.backend: nccl needs CUDA devices; use gloo (or auto) on CPUs")
    return backend


def check_process_count(params: TrainParams, world_size: int) -> None:
    """The global batch must split evenly: train.batch_size is the global batch, whatever the process count."""
    if world_size > 1 and params.batch_size % world_size:
        raise ParamsError(
            f"train.batch_size: {params.batch_size} images per step do not split evenly over {world_size} "
            f"processes; choose a multiple of {world_size} (it is the global batch: each process takes "
            f"batch_size / {world_size})"
        )
    if world_size > 1 and params.device.startswith("cuda:"):
        raise ParamsError(
            f"train.device: {params.device!r} names one GPU, but data-parallel training runs one process per GPU "
            "(process k on cuda:k of its machine): use cuda or auto"
        )


def cuda_device(ranks: Ranks) -> torch.device:
    """The GPU of this process: cuda:LOCAL_RANK, which must exist."""
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise ParamsError(
            f"{ranks.local_world_size} processes on this machine but {count} CUDA device(s): "
            f"start at most {count} (torchrun --nproc-per-node, or train.distributed.nproc)"
        )
    return torch.device("cuda", ranks.local_rank)


def start_process_group(ranks: Ranks, backend: str, device: torch.device) -> None:
    """Join torchrun's rendezvous (MASTER_ADDR/MASTER_PORT in the environment)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size)
    log.info("DDP: %s, backend %s", ranks.describe(), backend)


def stop_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_same_run(ranks: Ranks, digest: str) -> None:
    """Every process must train the same params on the same data (several machines: several checkouts)."""
    digests = ranks.gather(digest)
    if len(set(digests)) > 1:
        raise ParamsError(
            "the processes read different train params or data (run digests by rank: "
            f"{', '.join(digests)}): every machine must run the same checkout, params.yaml and data/prepared"
        )


def sync_global_rng(ranks: Ranks, device: torch.device) -> None:
    """Every process takes rank 0's global RNG state (and, on a GPU, that of rank 0's GPU for its own): dropout
    and stochastic depth then draw the same global-batch masks everywhere (global_batch.py)."""
    if not ranks.distributed:
        return
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    state = ranks.broadcast(state)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def is_peer_failure(error: BaseException) -> bool:
    """True for the error a collective raises when another process died (NCCL: DistError; gloo: a RuntimeError
    from its TCP transport, `Connection reset by peer` or `closed by peer`)."""
    return isinstance(error, dist.DistError) or "gloo/transport" in str(error)


def peer_failure_summary(error: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's source location: `Connection closed by peer ...`."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0] if str(error).strip() else "")
    return text.split(". ")[0] or type(error).__name__
