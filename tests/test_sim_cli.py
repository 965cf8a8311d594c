"""`batchgen sim` and `python -m batchgen.sim`: options on the command line, clear errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.sim.config import SimConfig


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_help_lists_every_simulator_knob() -> None:
    result = CliRunner().invoke(cli, ["sim", "--help"])

    assert result.exit_code == 0
    for name in SimConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in result.output, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "fast"], "simulator option 'speed': not a number: 'fast'"),
        (["--flavor", "comfy"], "simulator option 'flavor': must be one of 'a1111', 'forge'"),
        (["--fail-rate", "2"], "fail_rate must be between 0 and 1"),
    ],
)
def test_a_bad_value_is_a_message_not_a_traceback(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["sim", "--port", "0", *args])

    assert result.exit_code == 2
    assert message in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_bad_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text('speed = "x"\n', encoding="utf-8")

    result = CliRunner().invoke(cli, ["sim", "--config", str(config)])

    assert result.exit_code == 2
    assert f"{config}: simulator option 'speed': not a number" in result.stderr


@pytest.mark.parametrize("command", [["batchgen", "sim"], ["batchgen.sim"]])
def test_a_busy_port_says_so(busy_port: int, command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command, "--port", str(busy_port), "--speed", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert f"port {busy_port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
