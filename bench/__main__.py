"""Run the benchmarks and write their results under bench/results/.

Usage: python -m bench [--quick] [name ...]   (names: see BENCHMARKS)
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "prepare": "bench.prepare_bench",
    "train": "bench.train_bench",
    "export": "bench.export_bench",
    "serving": "bench.serving_bench",
    "tune": "bench.tune_bench",
    "flow": "bench.flow_bench",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run transferline's benchmarks.")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="default: all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    args = parser.parse_args(argv)
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
