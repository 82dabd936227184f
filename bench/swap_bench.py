"""Model swap benchmark: 32 clients sending without pause through a deploy (a swap) and a rollback (a swap back).

The service runs as `make demo` serves it (2 workers, 1 ONNX Runtime thread each, batching on) on
127.0.0.1, with two registered models: A, the champion it starts with, and B, the one deployed. The
clients are 32 Python threads, each with its own keep-alive connection, posting one JPEG to /classify
in a loop and recording when each request started and ended, its status and the `model_tag` of the
answer. The run: steady load, then POST /admin/swap to B (the deploy), steady load, then the swap
back to A (the rollback, as `python -m serving.registry rollback` does it), steady load.

Reported: requests and failed requests (any answer but 200, any connection error) over the whole run;
p50/p99 latency before the first swap and during the swaps (requests in flight at any moment between
sending POST /admin/swap and its answer); the swap's own timings (load and warm-up in the handling
worker, every worker ready, the switch); and whether every answer's model tag fits the order of the
swaps (`tag_order_violations`: A until the switch, B after, A again after the rollback; per client,
never back and forth). The latencies include the Python clients' own time, the same before and during.

Baseline: the deploy this replaces, a restart. The same clients run while the service is stopped and
started again on the same port; reported: failed requests and the longest time without any answer.

Model: the champion of the BentoML store ($BENTOML_HOME) when there is one, else the pipeline's trained
export, else a random-init MobileNetV2 (bench/model_source.py); the report says which. B is the same
bundle registered a second time (another tag): it costs what a new model of that size costs to load.

Writes bench/results/swap.{json,md}. Usage: python -m bench.swap_bench [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import machine, write_results
from bench.model_source import ModelSource, champion_source, model_source, run_in_store
from flows.local_server import LocalServer, running_server, start_server
from serving.swap_client import request_swap

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 32
WORKERS = 2
PHASE_SECONDS = 10.0  # steady load before the deploy, between deploy and rollback, and after
ERROR_PAUSE_S = 0.02  # a client that got no answer waits this long, so a stopped service is not hammered


@dataclass(frozen=True)
class Answer:
    client: int
    start: float  # time.monotonic() when the request was sent
    end: float
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    tag: str | None
    top: tuple[str, float] | None  # the top label and its probability, to match answers with models
    error: str | None = None  # what a failed request got: the service's error, or the connection error

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Swap:
    """One POST /admin/swap as the clients saw it: sent and answered (time.monotonic()), from and to which tag."""

    sent: float
    done: float
    old: str
    new: str
    report: dict


class SteadyClients:
    """`clients` threads, each posting `image` to /classify on its own keep-alive connection until stopped."""

    def __init__(self, url: str, image: bytes, clients: int = CLIENTS, headers: dict | None = None) -> None:
        self.url, self.image, self.headers = url, image, headers or {}
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> SteadyClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, client: int) -> None:
        with httpx.Client(headers=self.headers, timeout=30) as session:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    response = session.post(f"{self.url}/classify", files={"image": ("image.jpg", self.image)})
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                    self.answers.append(Answer(client, start, time.monotonic(), 0, None, None, failure))
                    time.sleep(ERROR_PAUSE_S)
                    continue
                end = time.monotonic()
                if response.status_code != 200:
                    failure = response.text[:300]
                    self.answers.append(Answer(client, start, end, response.status_code, None, None, failure))
                    continue
                body = response.json()
                best = body["predictions"][0]
                top = (best["label"], best["probability"])
                self.answers.append(Answer(client, start, end, 200, body["model_tag"], top))


def timed_swap(url: str, tag: str, old: str) -> Swap:
    sent = time.monotonic()
    report = request_swap(url, tag)
    return Swap(sent, time.monotonic(), old, tag, report)


def tag_order_violations(answers: list[Answer], first_tag: str, swaps: list[Swap]) -> list[str]:
    """Answers whose model tag does not fit the swaps' order, explained.

    Model k (the first tag, then each swap's new tag) is live, at most, from the moment swap k-1 was sent
    until swap k was answered; a request can only be answered by a model live at some moment of its own
    [start, end]. Per client (one keep-alive connection, hence one worker), the models must follow the
    swaps' order: never the old one again after the new one answered.
    """
    tags = [first_tag, *(swap.new for swap in swaps)]
    opens = [float("-inf"), *(swap.sent for swap in swaps)]
    closes = [*(swap.done for swap in swaps), float("inf")]
    problems: list[str] = []
    position: dict[int, int] = {}
    for answer in sorted((a for a in answers if a.ok), key=lambda a: a.start):
        live = [k for k, tag in enumerate(tags) if tag == answer.tag and opens[k] <= answer.end]
        possible = [k for k in live if answer.start <= closes[k]]
        later = [k for k in possible if k >= position.get(answer.client, 0)]
        where = f"client {answer.client}: {answer.tag} answered at {answer.end:.3f}"
        if not possible:
            problems.append(f"{where}, when it was not live")
        elif not later:
            problems.append(f"{where}, after a newer model had answered this client")
        else:
            position[answer.client] = later[0]
    return problems


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_ms(answers: list[Answer]) -> dict:
    times = [(a.end - a.start) * 1000 for a in answers if a.ok]
    return {
        "requests": len(times),
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times, default=None),
    }


def longest_silence_s(answers: list[Answer], start: float, end: float) -> float:
    """The longest stretch in [start, end] in which no request got an answer."""
    moments = sorted([start, *(a.end for a in answers if a.ok and start <= a.end <= end), end])
    return max(b - a for a, b in itertools.pairwise(moments))


def during(answers: list[Answer], swaps: list[Swap]) -> list[Answer]:
    return [a for a in answers if any(a.start <= s.done and a.end >= s.sent for s in swaps)]


def register_twice(home: Path, source: ModelSource, work: Path) -> tuple[str, str]:
    """Register `source` as model A (promoted: the service starts with it) and again as model B, in a throwaway
    BentoML home; the gate decision is a stand-in marked as the benchmark's (it measures serving)."""
    script = (
        "from pathlib import Path\n"
        "from bench.synthetic_bundle import write_gate_dir\n"
        "from serving.registry import register, promote\n"
        f"gate = Path({str(work / 'gate')!r})\n"
        "write_gate_dir(gate, True, {'git_commit': 'bench'})\n"
        "tags = [register(Path(" + repr(str(source.export_dir)) + "), gate, "
        "{'git_commit': 'bench', 'data_version': f'bench-{name}'}) for name in 'AB']\n"
        f"promote(tags[0], project=Path({str(work)!r}))\n"
        "print(' '.join(tags))\n"
    )
    first, second = run_in_store(script, home).split()
    return first, second


def restart_baseline(server: LocalServer, env: dict, log: Path, image: bytes, seconds: float) -> dict:
    """The same clients while the service is stopped and started again on its port (the deploy before swaps)."""
    restarted = None
    try:
        with SteadyClients(server.url, image) as clients:
            time.sleep(seconds / 2)
            stopped = time.monotonic()
            server.stop()
            restarted = start_server(PROJECT_ROOT, log, env, port=server.port)
            restarted.wait_ready(180)
            ready = time.monotonic()
            time.sleep(seconds / 2)
    finally:
        if restarted is not None:
            restarted.stop()
    answers = clients.answers
    return {
        "requests": len(answers),
        "failed": sum(not a.ok for a in answers),
        "restart_s": ready - stopped,
        "longest_silence_s": longest_silence_s(answers, stopped - 1.0, ready + seconds / 2),
    }


def measure(phase_s: float, image: bytes) -> dict:
    with tempfile.TemporaryDirectory(prefix="swap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        source = champion_source() or model_source(tmp / "bundle")
        model_a, model_b = register_twice(tmp / "bentoml", source, tmp)
        env = {
            "BENTOML_HOME": str(tmp / "bentoml"),
            "TRANSFERLINE_SERVE_WORKERS": str(WORKERS),
            "TRANSFERLINE_SERVE_ORT_THREADS": "1",
            "TRANSFERLINE_SERVE_BATCHING": "true",
            "TRANSFERLINE_SERVE_LOG_DIR": str(tmp / "predictions"),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        with running_server(PROJECT_ROOT, tmp / "serve.log", env, ready_timeout_s=180) as server:
            with SteadyClients(server.url, image) as warmup:
                time.sleep(min(phase_s, 5.0))
            begin = time.monotonic()
            with SteadyClients(server.url, image) as clients:
                time.sleep(phase_s)
                deploy = timed_swap(server.url, model_b, model_a)
                time.sleep(phase_s)
                rollback = timed_swap(server.url, model_a, model_b)
                time.sleep(phase_s)
            end = time.monotonic()
            restart = restart_baseline(server, env, tmp / "restart.log", image, 2 * phase_s)
    swaps = [deploy, rollback]
    answers = clients.answers
    before = [a for a in answers if a.end < deploy.sent]
    return {
        "model": source.to_dict(),
        "tags": {"A": model_a, "B": model_b},
        "seconds": end - begin,
        "warmup_requests": len(warmup.answers),
        "requests": len(answers),
        "failed": sum(not a.ok for a in answers),
        "failed_statuses": sorted({a.status for a in answers if not a.ok}),
        "failures": [  # when, relative to the deploy's POST /admin/swap, and what the client got
            {
                "status": a.status,
                "sent_s": round(a.start - deploy.sent, 3),
                "answered_s": round(a.end - deploy.sent, 3),
                "during_a_swap": any(a.start <= s.done and a.end >= s.sent for s in swaps),
                "error": a.error,
            }
            for a in answers
            if not a.ok
        ][:20],
        "tag_order_violations": tag_order_violations(answers, model_a, swaps),
        "answers_per_tag": {tag: sum(a.tag == tag for a in answers) for tag in (model_a, model_b)},
        "before": latency_ms(before),
        "during_swaps": latency_ms(during(answers, swaps)),
        "after_rollback": latency_ms([a for a in answers if a.start > rollback.done]),
        "longest_silence_during_swaps_s": max(longest_silence_s(answers, s.sent, s.done) for s in swaps),
        "swaps": {
            name: {"wall_s": swap.done - swap.sent, **{k: v for k, v in swap.report.items() if k.endswith("_s")}}
            for name, swap in (("deploy", deploy), ("rollback", rollback))
        },
        "restart_baseline": restart,
    }


def analyse(raw: dict, phase_s: float) -> dict:
    checks = {
        "failed_requests": {"value": raw["failed"], "target": "== 0", "met": raw["failed"] == 0},
        "tag_order_violations": {
            "value": len(raw["tag_order_violations"]),
            "target": "== 0",
            "met": not raw["tag_order_violations"],
        },
    }
    return {
        "setup": {
            "clients": CLIENTS,
            "workers": WORKERS,
            "ort_threads": 1,
            "phase_seconds": phase_s,
            "model": raw["model"]["description"],
            "model_kind": raw["model"]["kind"],
            "client": f"{CLIENTS} Python threads (httpx, keep-alive), multipart POST /classify of one 128x96 JPEG",
            "load_average_1min_after": os.getloadavg()[0],
        },
        **{key: value for key, value in raw.items() if key != "model"},
        "tag_order_violations": raw["tag_order_violations"][:20],
        "checks": checks,
    }


def render_markdown(results: dict) -> str:
    setup, restart, host = results["setup"], results["restart_baseline"], results["machine"]
    isa = ", ".join(host.get("cpu_instruction_sets") or []) or "instruction sets not recorded"

    def row(name: str, cell: dict) -> str:
        figures = ["-" if cell[key] is None else f"{cell[key]:.1f}" for key in ("p50_ms", "p99_ms", "max_ms")]
        return f"| {name} | {cell['requests']} | " + " | ".join(figures) + " |"

    swap_rows = [
        f"| {name} | {swap['wall_s']:.2f} | {swap.get('load_s', 0):.2f} | {swap['prepare_s']:.2f} | "
        f"{swap['switch_s'] * 1000:.0f} |"
        for name, swap in results["swaps"].items()
    ]
    checks = [
        f"| {name} | {check['value']} | {check['target']} | {'met' if check['met'] else 'NOT met'} |"
        for name, check in results["checks"].items()
    ]
    return "\n".join(
        [
            "# Model swap",
            "",
            f"Measured {host['date']} on {host['cpu']} ({isa}), {host['cores']} cores.",
            "",
            f"{setup['clients']} clients sending without pause ({setup['client']}) against the service "
            f"({setup['workers']} workers, {setup['ort_threads']} ONNX Runtime thread each, batching on; "
            f"{setup['model']}): {setup['phase_seconds']:.0f} s of load, a deploy (POST /admin/swap to model B), "
            f"{setup['phase_seconds']:.0f} s, the rollback (swap back to A), {setup['phase_seconds']:.0f} s. "
            f"Load average (1 min) after the run: {setup['load_average_1min_after']:.1f} on this machine's cores.",
            "",
            f"**{results['requests']} requests, {results['failed']} failed**; "
            f"{len(results['tag_order_violations'])} answers with a model tag out of the swaps' order; "
            f"answers per model: A {results['answers_per_tag'][results['tags']['A']]}, "
            f"B {results['answers_per_tag'][results['tags']['B']]}. Longest time without any answer during a swap: "
            f"{results['longest_silence_during_swaps_s'] * 1000:.0f} ms.",
            "",
            "| window | answered | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            row("before the deploy", results["before"]),
            row("during the swaps", results["during_swaps"]),
            row("after the rollback", results["after_rollback"]),
            "",
            "| swap | wall s | load + warm-up s | all workers ready s | switch ms |",
            "|---|---|---|---|---|",
            *swap_rows,
            "",
            f"Baseline, a restart (what a deploy did before): the same clients while the service is stopped and "
            f"started again: {restart['failed']} of {restart['requests']} requests failed; "
            f"{restart['longest_silence_s']:.1f} s without any answer (restart {restart['restart_s']:.1f} s).",
            "",
            "| check | value | target | verdict |",
            "|---|---|---|---|",
            *checks,
            "",
        ]
    )


def run(quick: bool = False) -> dict:
    from bench.serving_bench import bench_image

    phase_s = 3.0 if quick else PHASE_SECONDS
    with tempfile.TemporaryDirectory(prefix="swap-image-") as tmp:
        image = bench_image(Path(tmp) / "bench.jpg").read_bytes()
    results = {"machine": machine(), **analyse(measure(phase_s, image), phase_s)}
    write_results("swap", results, render_markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s phases instead of 10 s (a smoke run)")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(render_markdown(results))
    return 0 if all(check["met"] for check in results["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
