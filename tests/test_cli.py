"""The one command-line shell: sub-commands, exit statuses, one-line errors, logging, --help of every entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from transferline.cli import add_command, cli_parser, run_command
from transferline.env import tool_env
from transferline.errors import DataError

ENTRY_POINTS = (
    "stages.export",
    "flows.pipeline",
    "flows.tune",
    "flows.data_watch",
    "flows.deploy",
    "flows.demo",
    "serving.registry",
    "serving.client",
    "transferline.data.assets",
)


def python_m(*args: str, cwd: Path = PROJECT_ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env={**tool_env(), **env}, capture_output=True, text=True, timeout=300
    )


def two_commands(calls: list[str]):
    parser = cli_parser("test")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command(commands, "ok", lambda args: calls.append("ok"), "succeeds")
    failing = add_command(commands, "fail", lambda args: (_ for _ in ()).throw(DataError(args.why)), "fails")
    failing.add_argument("why")
    add_command(commands, "status", lambda args: 7, "returns its own status")
    return parser


def test_sub_commands_run_their_handler_and_return_its_status(capsys):
    calls: list[str] = []
    assert run_command(None, two_commands(calls), ["ok"]) == 0 and calls == ["ok"]
    assert run_command(None, two_commands(calls), ["status"]) == 7
    assert run_command(None, two_commands(calls), ["fail", "no images in data/raw"]) == 2
    assert capsys.readouterr().err == "error: no images in data/raw\n"
    assert calls == ["ok"]


def test_usage_errors_and_help_exit_as_argparse_does(capsys):
    with pytest.raises(SystemExit) as usage:
        run_command(None, two_commands([]), ["nope"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as shown:
        run_command(None, two_commands([]), ["--help"])
    assert shown.value.code == 0
    assert "--verbose" in capsys.readouterr().out


LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from transferline.cli import cli_parser, run_cli

    def main(args):
        logging.getLogger("onnx_ir.passes.common.initializer_deduplication").info("Replaced initializer 'a' with 'b'")
        logging.getLogger("onnxscript.optimizer").warning("a library warning")
        logging.getLogger("transferline.export").info("exported model.onnx")
        logging.getLogger("transferline.export").debug("a debug detail")

    run_cli(main, cli_parser("logging"), sys.argv[1:])
    """
)


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_info_lines_are_debug_output(verbose):
    result = python_m("-c", LOGGING_SCRIPT, *(["--verbose"] if verbose else []))
    assert result.returncode == 0, result.stderr
    assert "transferline.export INFO exported model.onnx" in result.stderr
    assert "onnxscript.optimizer WARNING a library warning" in result.stderr
    assert ("Replaced initializer" in result.stderr) is verbose
    assert ("a debug detail" in result.stderr) is verbose


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_has_the_shared_help(module):
    result = python_m("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module}")
    assert "--verbose" in result.stdout


def test_assets_sub_commands_and_the_old_command_lines_parse():
    from transferline.data.assets import build_parser

    parser = build_parser()
    assert parser.parse_args([]).what is None  # no sub-command: all, as before
    assert parser.parse_args(["all"]).what == "all"
    assert parser.parse_args(["data", "--data-dir", "x"]).data_dir == Path("x")
    assert parser.parse_args(["--data-dir", "y", "data"]).data_dir == Path("y")


def test_registry_error_is_one_line_with_status_2(tmp_path):
    result = python_m("-m", "serving.registry", "promote", "nope:1", BENTOML_HOME=str(tmp_path / "bentoml"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_client_error_is_one_line_with_status_2(tmp_path):
    result = python_m("-m", "serving.client", str(tmp_path / "missing.jpg"))
    assert result.returncode == 2
    assert result.stderr == f"error: no such file: {tmp_path / 'missing.jpg'}\n"
