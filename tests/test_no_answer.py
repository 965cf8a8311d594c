"""No endpoint answers at the start (a wrong port, a server not started): stop at once, exit 2."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from runhelp import prompts, write_sheet

from batchgen.cli import cli


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port: int = unused.getsockname()[1]
        return port


def test_a_wrong_port_stops_at_once_with_the_reason_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCHGEN_RAISE_ERRORS", raising=False)
    sheet = write_sheet(tmp_path / "rows.csv", prompts(3))
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    result = CliRunner().invoke(
        cli, ["run", str(sheet), "--endpoint", url, "--out", str(tmp_path / "out")]
    )
    assert time.monotonic() - began < 15, "no wait for an endpoint that never answered"
    assert result.exit_code == 2, result.output
    assert "no endpoint answers; nothing was sent" in result.stderr
    assert url in result.stderr and "cannot connect" in result.stderr
    assert "--endpoint" in result.stderr and "--api" in result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_check_says_the_same_for_a_wrong_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCHGEN_RAISE_ERRORS", raising=False)
    sheet = write_sheet(tmp_path / "rows.csv", prompts(2))
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["check", str(sheet), "--endpoint", url])
    assert result.exit_code == 2, result.output
    assert "no endpoint answers; nothing was checked" in result.stderr and url in result.stderr
