"""The swap protocol between workers, the admin guard, the code digest and the tag-order check, without a server.

The workers here are real `SwapFollower` threads on a real control directory, in this process; what they
load is a stand-in model, so a worker that cannot load can be made to order. tests/serving/test_swap.py
runs the same protocol in a real `bentoml serve` with two workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.requests import Request

from bench.swap_bench import Answer, Swap, tag_order_violations
from serving.auth import admin_refusal
from serving.code_digest import code_digest
from serving.swap import (
    SwapBusy,
    SwapFailed,
    SwapFollower,
    control_dir,
    coordinate_swap,
    process_start_time,
    startup_tag,
    swap_lock,
    worker_statuses,
)


@dataclass
class StandIn:
    tag: str
    loaded_at: float = field(default_factory=time.time)


class Worker:
    """One worker's state as the service keeps it: a current model, switched by its follower."""

    def __init__(self, directory: Path, index: int, first: str, refuses: set[str] = frozenset()) -> None:
        self.current = StandIn(startup_tag(directory, first))
        self.loads: list[str] = []
        self.refuses = refuses
        self.follower = SwapFollower(directory, index, lambda: self.current, self.load, self.switch)
        self.follower.start()

    def load(self, tag: str) -> StandIn:
        self.loads.append(tag)
        if tag in self.refuses:
            raise RuntimeError(f"cannot load {tag} here")
        return StandIn(tag)

    def switch(self, model: StandIn) -> None:
        self.current = model


def swap(directory: Path, workers: list[Worker], handler: Worker, tag: str, **timeouts: float) -> dict:
    """What POST /admin/swap does in the worker `handler`: load first, then coordinate."""
    loaded = handler.load(tag)
    with swap_lock(directory):
        return coordinate_swap(
            directory,
            len(workers),
            tag,
            handler.current.tag,
            lambda generation: handler.follower.offer(generation, loaded),
            **timeouts,
        )


@pytest.fixture
def directory(tmp_path: Path):
    return tmp_path / "control"


def test_every_worker_switches_or_none_does(directory: Path):
    directory.mkdir()
    workers = [Worker(directory, 1, "A"), Worker(directory, 2, "A", refuses={"broken"})]
    try:
        result = swap(directory, workers, workers[0], "B")
        assert [w.current.tag for w in workers] == ["B", "B"]
        assert result["generation"] == 1 and result["previous"] == "A" and result["model_tag"] == "B"
        assert [s["state"] for s in result["workers"]] == ["serving", "serving"]
        assert workers[0].loads == ["B"], "the handling worker loads once; its follower reuses that model"

        with pytest.raises(SwapFailed) as failure:
            swap(directory, workers, workers[0], "broken")
        assert failure.value.status == 503
        assert "swap to broken aborted, every worker keeps serving B" in str(failure.value)
        assert "worker 2: RuntimeError: cannot load broken here" in str(failure.value)
        time.sleep(0.2)
        assert [w.current.tag for w in workers] == ["B", "B"]  # worker 1 had loaded it too, and dropped it
        assert {s["state"] for s in worker_statuses(directory, 2)} == {"aborted"}

        again = swap(directory, workers, workers[1], "A")  # a rollback, handled by the other worker
        assert again["generation"] == 3 and [w.current.tag for w in workers] == ["A", "A"]
    finally:
        for worker in workers:
            worker.follower.stop()


def test_a_worker_that_starts_after_a_swap_serves_the_swapped_model(directory: Path):
    directory.mkdir()
    first = Worker(directory, 1, "A")
    try:
        swap(directory, [first], first, "B")
        late = Worker(directory, 2, "A")  # a worker BentoML restarted: started with the tag of the import
        late.follower.stop()
        assert late.current.tag == "B" and late.loads == []
    finally:
        first.follower.stop()


def test_a_silent_worker_aborts_the_swap_and_a_second_swap_meanwhile_is_refused(directory: Path):
    directory.mkdir()
    only = Worker(directory, 1, "A")
    try:
        with swap_lock(directory), pytest.raises(SwapBusy, match="another model swap is in progress"):
            swap(directory, [only], only, "B")
        with pytest.raises(SwapFailed, match="worker 2: no answer in 1 s"):
            swap(directory, [only, only], only, "B", prepare_timeout_s=1.0, commit_timeout_s=1.0)
        assert only.current.tag == "A"
    finally:
        only.follower.stop()


def test_the_control_directory_belongs_to_one_serve_process():
    import os

    mine = control_dir(os.getpid())
    assert mine.name == f"{os.getpid()}-{process_start_time(os.getpid())}"
    assert control_dir(os.getppid()) != mine


def request_from(host: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/admin/swap", "headers": [], "client": (host, 5000)})


def test_admin_endpoints_answer_loopback_clients_only():
    assert admin_refusal(request_from("127.0.0.1")) is None
    assert admin_refusal(request_from("::1")) is None
    refused = admin_refusal(request_from("10.1.2.3"))
    assert refused is not None and refused.status_code == 403
    assert b"admin endpoints answer loopback clients only" in refused.body and b"10.1.2.3" in refused.body
    assert admin_refusal(request_from("not-an-address")).status_code == 403


def test_the_code_digest_changes_with_the_service_code_only(tmp_path: Path):
    (tmp_path / "serving").mkdir()
    (tmp_path / "transferline" / "data").mkdir(parents=True)
    (tmp_path / "serving" / "service.py").write_text("A = 1\n")
    (tmp_path / "transferline" / "data" / "imaging.py").write_text("B = 1\n")
    before = code_digest(tmp_path)
    (tmp_path / "serving" / "__pycache__").mkdir()
    (tmp_path / "serving" / "__pycache__" / "service.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "README.md").write_text("docs\n")
    assert code_digest(tmp_path) == before
    (tmp_path / "transferline" / "data" / "imaging.py").write_text("B = 2\n")
    assert code_digest(tmp_path) != before


def answer(client: int, start: float, end: float, tag: str) -> Answer:
    return Answer(client, start, end, 200, tag, None)


def test_the_tag_order_check_catches_a_wrong_or_backward_tag():
    swaps = [Swap(10.0, 11.0, "A", "B", {}), Swap(20.0, 21.0, "B", "A", {})]
    fine = [answer(0, 1, 2, "A"), answer(0, 10.2, 10.5, "A"), answer(0, 10.6, 10.8, "B"), answer(0, 15, 16, "B")]
    fine += [answer(0, 20.5, 20.6, "A"), answer(1, 10.5, 12.0, "B"), answer(1, 25, 26, "A")]
    assert tag_order_violations(fine, "A", swaps) == []
    assert len(tag_order_violations([answer(0, 1, 2, "B")], "A", swaps)) == 1  # B before the deploy
    assert len(tag_order_violations([answer(0, 15, 16, "A")], "A", swaps)) == 1  # A between deploy and rollback
    backward = [answer(0, 10.2, 10.3, "B"), answer(0, 10.4, 10.5, "A")]  # the old model after the new one
    assert "after a newer model" in tag_order_violations(backward, "A", swaps)[0]
