"""Serving benchmark: the BentoML service under load on loopback, against its ceilings, in one run.

Three services run side by side on 127.0.0.1 (idle ones cost no CPU): the real service with
adaptive batching, the same service with batching off, and a no-model BentoML service that only
parses the upload (the framework's ceiling). `wrk` (C, one thread, keep-alive; Debian package
`wrk`) posts one JPEG per request at 1, 8 and 32 concurrent connections; every level runs each
service in alternating rounds, so background load on a shared machine falls on all of them alike.
In-process ONNX Runtime, with the service's thread budget, at the batch sizes the service formed and
running the outputs the service runs (the logits, and the feature distances its OOD flag reads), gives
the model's ceiling. The share of that ceiling the service reaches at 32 clients is paired: each
batching round is followed at once by a ceiling measurement at the batch size that round formed, and
the share is the median of the rounds' ratios, so a host that speeds up or slows down between the
service's rounds and a separate ceiling phase (minutes apart) does not move it.

Model: the pipeline's trained model when models/ and export/ hold one, else a random-init MobileNetV2
of the default size (bench/model_source.py; the report says which). $TRANSFERLINE_BENCH_MODEL_TAG and
$BENTOML_HOME select a registered champion instead. Writes bench/results/serving.{json,md}.

Usage: python -m bench.serving_bench [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from bench.common import write_results
from bench.model_source import build_store, model_source
from flows.local_server import LocalServer, running_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
TARGETS = {"errors": 0, "share_of_ceiling": 0.40, "p99_ms": 300.0, "batching_gain": 1.0}

WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_IMAGE"), "rb"))
local img = f:read("*all")
f:close()
local boundary = "----transferline-bench"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n" ..
  'Content-Disposition: form-data; name="image"; filename="bench.jpg"\r\n' ..
  "Content-Type: image/jpeg\r\n\r\n" .. img .. "\r\n--" .. boundary .. "--\r\n"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

NOOP_SERVICE = '''
"""No model: parses the upload exactly like the real service and answers a constant (framework ceiling)."""
import bentoml
from starlette.requests import Request
from starlette.responses import Response

from serving.http_input import SINGLE, ApiError, InputLimits, parse_image_request
from serving.schemas import Classification, ClassifyInput, LabelProbability

LIMITS = InputLimits(32, 10_000_000, 5, 20)


@bentoml.service(
    name="noop", workers=WORKERS, logging={"access": {"enabled": False}}, tracing={"excluded_urls": [".*"]}
)
class Noop:
    @bentoml.api(route="/classify", input_spec=ClassifyInput, output_spec=Classification)
    async def classify(self, request: Request) -> Response:
        try:
            parsed = await parse_image_request(request, SINGLE, LIMITS)
        except ApiError as exc:
            return exc.response()
        label = LabelProbability(label="none", probability=1.0)
        answer = Classification(
            model_tag="none",
            data_version="none",
            predictions=[label] * parsed.top_k,
            out_of_distribution=False,
            ood_score=0.0,
        )
        return Response(answer.model_dump_json(), media_type="application/json")  # as the service's json_response
'''


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("the serving benchmark needs wrk: apt-get install -y wrk (Debian) or brew install wrk")
    return wrk


def bench_image(target: Path) -> Path:
    """A 128x96 JPEG photo (scikit-image's cat): decoding stays cheap, so serving costs show."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).resize((128, 96)).save(target, quality=90)
    return target


def tree_cpu_seconds(root: int, proc: Path = Path("/proc")) -> float:
    """User + system CPU seconds of a live process and all its descendants (a service and the workers it
    started: BentoML puts its workers in sessions of their own, so the process group would miss them)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, ticks = {}, {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # a process that ended meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])  # ppid
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += ticks.get(pid, 0)
        pending.extend(children.get(pid, []))
    return total / tick


def measured_wrk(server: LocalServer, *wrk_args) -> dict:
    """run_wrk, plus the CPU seconds the service (its process tree) and the client spent meanwhile:
    the ratio to the ORT ceiling is the share of the service's CPU that goes to the model."""
    service_before, client_before = tree_cpu_seconds(server.process.pid), _children_cpu_seconds()
    result = run_wrk(*wrk_args)
    result["service_cpu_s"] = tree_cpu_seconds(server.process.pid) - service_before
    result["client_cpu_s"] = _children_cpu_seconds() - client_before
    return result


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been waited for
    return usage.ru_utime + usage.ru_stime


def run_wrk(wrk: str, script: Path, image: Path, url: str, connections: int, seconds: float) -> dict:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "5s", "-s", str(script), url]
    result = subprocess.run(
        command,
        env={**os.environ, "BENCH_IMAGE": str(image)},
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def batch_histogram(server: LocalServer) -> dict[str, float]:
    """transferline_batch_images_{count,sum,bucket} from the service's /metrics (all workers)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        match = re.match(r'transferline_batch_images_(count|sum|bucket)(?:\{le="([^"]+)"\})? ([0-9.e+]+)', line)
        if match:
            kind, le, value = match.groups()
            values[f"le_{le}" if kind == "bucket" else kind] = float(value)
    return values


def summarise(rounds: list[dict]) -> dict:
    """Totals over the rounds; percentiles: median p50, worst p95/p99 (a conservative merge)."""
    requests = sum(r["requests"] for r in rounds)
    seconds = sum(r["duration_us"] for r in rounds) / 1e6
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_s": requests / seconds,
        "p50_ms": statistics.median(r["p50_us"] for r in rounds) / 1000,
        "p95_ms": max(r["p95_us"] for r in rounds) / 1000,
        "p99_ms": max(r["p99_us"] for r in rounds) / 1000,
        "max_ms": max(r["max_us"] for r in rounds) / 1000,
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in rounds),
        "rounds": len(rounds),
        # CPU milliseconds a request cost the service (all its processes) and the load client
        "service_cpu_ms_per_request": 1000 * sum(r["service_cpu_s"] for r in rounds) / max(1, requests),
        "client_cpu_ms_per_request": 1000 * sum(r["client_cpu_s"] for r in rounds) / max(1, requests),
    }


def batches_formed(before: dict, after: dict) -> dict:
    runs = after.get("count", 0) - before.get("count", 0)
    images = after.get("sum", 0) - before.get("sum", 0)
    buckets = {key[3:]: after[key] - before.get(key, 0) for key in after if key.startswith("le_")}
    return {"runs": int(runs), "images": int(images), "mean_images": images / runs if runs else 0.0, "le": buckets}


def _spec(onnx_path: str):
    from transferline.data.preprocessing import PreprocessSpec

    return PreprocessSpec.from_dict(json.loads((Path(onnx_path).parent / "preprocess.json").read_text()))


def _classifier(onnx_path: str):
    """The model as the service opens it (same session options, one thread)."""
    from transferline.evaluation.onnx_classifier import OnnxClassifier

    classes = json.loads((Path(onnx_path).parent / "classes.json").read_text())["classes"]
    return OnnxClassifier.open(Path(onnx_path), classes, _spec(onnx_path), threads=1)


def _ort_images_per_s(onnx_path: str, batch: int, seconds: float) -> float:
    """ONNX Runtime alone, running the outputs the service runs (the logits, and the feature distances
    that its OOD flag reads where the model has them)."""
    from transferline.evaluation.onnx_export import measure_latency

    classifier = _classifier(onnx_path)
    timing = measure_latency(classifier.session, classifier.spec.image_size, batch, seconds, classifier.answer_outputs)
    return timing["images_per_s"]


def _decode_and_ort_per_s(onnx_path: str, image: str, seconds: float) -> float:
    """Requests/s of decode + preprocess + ONNX Runtime at batch 1, no HTTP: a zero-overhead server."""
    from transferline.data.imaging import ImageLimits
    from transferline.evaluation.scoring import prepare_pixels

    classifier = _classifier(onnx_path)
    data = Path(image).read_bytes()
    done, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        classifier.answers(prepare_pixels(data, classifier.spec, ImageLimits())[None])
        done += 1
    return done / (time.perf_counter() - start)


def in_parallel(processes: int, fn, *args) -> float:
    """Sum of `fn(*args)` run at once in `processes` processes: the machine's ceiling, not one core's."""
    with ProcessPoolExecutor(processes) as pool:
        return sum(pool.map(fn, *([arg] * processes for arg in args)))


def ceilings(onnx_path: Path, image: Path, workers: int, batch_sizes: list[int], seconds: float) -> dict:
    """Best of two measurements per batch size: a ceiling should not be lowered by a busy moment."""
    ort = {
        batch: max(in_parallel(workers, _ort_images_per_s, str(onnx_path), batch, seconds) for _ in range(2))
        for batch in batch_sizes
    }
    return {
        "processes": workers,
        "ort_threads": 1,
        "ort_images_per_s": {str(batch): value for batch, value in ort.items()},
        "decode_preprocess_ort_per_s": in_parallel(workers, _decode_and_ort_per_s, str(onnx_path), str(image), seconds),
        "outputs": list(_classifier(str(onnx_path)).answer_outputs),  # opened last: the pools fork without it
    }


def own_home(home: Path, target: Path) -> str:
    """A BentoML home sharing `home`'s models: each `bentoml serve` wipes its home's Prometheus directory
    at start, so services sharing one home lose each other's metrics."""
    target.mkdir(parents=True)
    (target / "models").symlink_to(home / "models", target_is_directory=True)
    return str(target)


def start_variants(tmp: Path, home: Path, common: dict[str, str], workers: int):
    """The three services, by name, as context managers that start them and always stop them."""
    (tmp / "noop_service.py").write_text(NOOP_SERVICE.replace("WORKERS", str(workers)))
    classifier = "serving.service:Classifier"
    on = {**common, "TRANSFERLINE_SERVE_BATCHING": "true", "BENTOML_HOME": own_home(home, tmp / "home-on")}
    off = {**common, "TRANSFERLINE_SERVE_BATCHING": "false", "BENTOML_HOME": own_home(home, tmp / "home-off")}
    noop = {**common, "BENTOML_HOME": own_home(home, tmp / "home-noop")}
    return {
        "batching_on": running_server(PROJECT_ROOT, tmp / "on.log", on, classifier),
        "batching_off": running_server(PROJECT_ROOT, tmp / "off.log", off, classifier),
        "no_model": running_server(tmp, tmp / "noop.log", noop, "noop_service:Noop"),
    }


def run(quick: bool = False) -> dict:
    wrk = require_wrk()
    load_before = os.getloadavg()[0]
    phase_s = 4.0 if quick else 12.0
    rounds, workers = 2, 2
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if os.environ.get("TRANSFERLINE_BENCH_MODEL_TAG"):
            home, tag = Path(os.environ["BENTOML_HOME"]), os.environ["TRANSFERLINE_BENCH_MODEL_TAG"]
            model = {"kind": "registered", "description": f"registered champion {tag}"}
        else:
            home = tmp / "bentoml"
            source = model_source(tmp / "bundle")
            tag = build_store(home, source, tmp / "bundle")
            model = source.to_dict()
        image = bench_image(tmp / "bench.jpg")
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        common = {
            "TRANSFERLINE_MODEL_TAG": tag,
            "TRANSFERLINE_SERVE_WORKERS": str(workers),
            "TRANSFERLINE_SERVE_ORT_THREADS": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        measured: dict[str, dict[int, list[dict]]] = {}
        formed: dict[int, dict] = {}
        paired: list[dict] = []
        onnx_path, pair_s = model_onnx_path(home, tag), 1.0 if quick else 2.0
        with contextlib.ExitStack() as stack:
            variants = start_variants(tmp, home, common, workers)
            servers = {name: stack.enter_context(server) for name, server in variants.items()}
            measured = {name: {c: [] for c in CONCURRENCY} for name in servers}
            for server in servers.values():  # warm every worker before measuring
                run_wrk(wrk, script, image, f"{server.url}/classify", 8, 2)
            on = servers["batching_on"]
            for connections in CONCURRENCY:
                before = batch_histogram(on)
                for round_index in range(rounds):
                    order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
                    for name in order:
                        pair = name == "batching_on" and connections == max(CONCURRENCY)
                        round_before = batch_histogram(on) if pair else None
                        result = measured_wrk(
                            servers[name],
                            wrk,
                            script,
                            image,
                            f"{servers[name].url}/classify",
                            connections,
                            phase_s / rounds,
                        )
                        measured[name][connections].append(result)
                        if pair:
                            round_formed = batches_formed(round_before, batch_histogram(on))
                            paired.append(paired_share(result, round_formed, onnx_path, workers, pair_s))
                formed[connections] = batches_formed(before, batch_histogram(on))
        batch_sizes = sorted({1, *(max(1, round(f["mean_images"])) for f in formed.values())})
        limits = ceilings(onnx_path, image, workers, batch_sizes, 2.0 if quick else 4.0)
    results = analyse(measured, formed, limits, paired, tag, workers, phase_s, rounds)
    results["model"] = {**model, "tag": tag}
    results["setup"]["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    write_results("serving", results, render_markdown(results))
    return results


def paired_share(result: dict, round_formed: dict, onnx_path: Path, workers: int, seconds: float) -> dict:
    """One batching round's requests/s against the ORT ceiling measured right after it, at the batch size
    that round formed."""
    batch = max(1, round(round_formed["mean_images"]))
    ceiling = in_parallel(workers, _ort_images_per_s, str(onnx_path), batch, seconds)
    rate = result["requests"] / (result["duration_us"] / 1e6)
    return {"requests_per_s": rate, "batch": batch, "ceiling_images_per_s": ceiling, "share": rate / ceiling}


def model_onnx_path(home: Path, tag: str) -> Path:
    name, version = tag.split(":")
    return home / "models" / name / version / "model.onnx"


def require_clean_ceiling(levels: dict) -> None:
    """The no-model service is a ceiling only if it answered: one that fails every request measures its
    error path (as it did once its answer lacked fields the schema had gained)."""
    failed = {level: figures["errors"] for level, figures in levels["no_model"].items() if figures["errors"]}
    if failed:
        raise RuntimeError(
            f"the no-model service answered errors (clients: errors) {failed}: its figures are no ceiling"
        )


def analyse(measured, formed, limits, paired, tag, workers, phase_s, rounds) -> dict:
    levels = {
        name: {str(c): summarise(rounds_) for c, rounds_ in per_level.items()} for name, per_level in measured.items()
    }
    require_clean_ceiling(levels)
    top = str(max(CONCURRENCY))
    at_top = formed[max(CONCURRENCY)]
    ceiling_batch = str(max(1, round(at_top["mean_images"])))
    ceiling = statistics.mean(p["ceiling_images_per_s"] for p in paired)
    share = statistics.median(p["share"] for p in paired)
    on, off = levels["batching_on"][top], levels["batching_off"][top]
    checks = {
        "errors": {"value": on["errors"], "target": f"== {TARGETS['errors']}", "met": on["errors"] == 0},
        "share_of_ceiling": {
            "value": share,
            "target": f">= {TARGETS['share_of_ceiling']}",
            "met": share >= TARGETS["share_of_ceiling"],
        },
        "p99_ms": {
            "value": on["p99_ms"],
            "target": f"<= {TARGETS['p99_ms']}",
            "met": on["p99_ms"] <= TARGETS["p99_ms"],
        },
        "batching_gain": {
            "value": on["requests_per_s"] / off["requests_per_s"],
            "target": f">= {TARGETS['batching_gain']}",
            "met": on["requests_per_s"] / off["requests_per_s"] >= TARGETS["batching_gain"],
        },
    }
    return {
        "model": {"tag": tag},
        "setup": {
            "workers": workers,
            "ort_threads": 1,
            "load_client": "wrk, 1 thread, keep-alive, multipart POST /classify of one 128x96 JPEG",
            "seconds_per_level": phase_s,
            "rounds": rounds,
        },
        "levels": levels,
        "batches_formed": {str(c): f for c, f in formed.items()},
        "ceilings": {
            **limits,
            "used_for_share": {"batch": int(ceiling_batch), "images_per_s": ceiling, "paired_rounds": paired},
        },
        "targets_at_32_clients": checks,
    }


def render_markdown(results: dict) -> str:
    levels, formed, limits = results["levels"], results["batches_formed"], results["ceilings"]
    rows = []
    for c in CONCURRENCY:
        for name in ("batching_on", "batching_off", "no_model"):
            r = levels[name][str(c)]
            batch = f"{formed[str(c)]['mean_images']:.2f}" if name == "batching_on" else ""
            rows.append(
                f"| {c} | {name} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['errors']} | {r['service_cpu_ms_per_request']:.2f} | "
                f"{r['client_cpu_ms_per_request']:.2f} | {batch} |"
            )
    ort = ", ".join(f"batch {b}: {v:.0f} images/s" for b, v in limits["ort_images_per_s"].items())
    checks = "\n".join(
        f"| {name} | {c['value']:.3g} | {c['target']} | {'met' if c['met'] else 'NOT met'} |"
        for name, c in results["targets_at_32_clients"].items()
    )
    setup = results["setup"]
    return "\n".join(
        [
            "# Serving",
            "",
            f"Model: {results['model']['description']} ({results['model']['tag']}). "
            f"Service: {setup['workers']} workers, "
            f"{setup['ort_threads']} ONNX Runtime thread each. Load: {setup['load_client']}; "
            f"{setup['seconds_per_level']:.0f} s per service and level, in {setup['rounds']} alternating rounds "
            "(p50: median of rounds; p95/p99: worst round). "
            f"Machine load average (1 min) before/after: {setup['load_average_1min']['before']:.1f} / "
            f"{setup['load_average_1min']['after']:.1f} on {os.cpu_count()} cores: other work on the machine "
            "lowers every figure, the ceilings included.",
            "",
            "| clients | service | requests/s | p50 ms | p95 ms | p99 ms | errors | service CPU ms a request "
            "| client CPU ms a request | mean images per model run |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"In-process ceilings ({limits['processes']} processes at once, 1 ONNX Runtime thread each, "
            f"running the outputs the service runs: {', '.join(limits['outputs'])}): "
            f"ORT alone {ort}; "
            f"decode + preprocess + ORT at batch 1: {limits['decode_preprocess_ort_per_s']:.0f} images/s.",
            "",
            "Share of the ceiling at 32 clients, per batching round (the ceiling measured right after the round, "
            "at the batch size it formed): "
            + "; ".join(
                f"{p['requests_per_s']:.0f} requests/s vs {p['ceiling_images_per_s']:.0f} images/s at batch "
                f"{p['batch']} = {p['share']:.3f}"
                for p in limits["used_for_share"]["paired_rounds"]
            )
            + ".",
            "",
            "Targets at 32 clients (batching on; share: the median of the rounds'):",
            "",
            "| check | value | target | verdict |",
            "|---|---|---|---|",
            checks,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s per level instead of 12 (a smoke run)")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
