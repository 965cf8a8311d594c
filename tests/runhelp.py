"""Shared test helpers: sheets and images on disk, jobs, manifests, simulators (TLS too)."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from openpyxl import Workbook
from PIL import Image

from batchgen.job import EndpointSpec, JobSpec, OutputSpec, RetrySpec, TimeoutSpec
from batchgen.sim import SimConfig, SimServer
from batchgen.sim.app import SimApp
from batchgen.sim.stats import SimStats


async def no_sleep(_: float) -> None:
    """Tenacity's sleep, made instant."""


def write_png(path: Path, color: str = "red") -> Path:
    """A small PNG file, its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


@asynccontextmanager
async def simulators(*configs: SimConfig) -> AsyncIterator[list[SimServer]]:
    """In-process simulators, one per config, all stopped at the end."""
    servers = [SimServer(config) for config in configs]
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()


def write_sheet(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """The same rows as CSV, TSV, XLSX or JSONL, by the file's suffix."""
    headers = list(dict.fromkeys(key for row in rows for key in row))
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".xlsx":
        book = Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.append(headers)
        for row in rows:
            sheet.append([row.get(h) for h in headers])
        book.save(path)
    else:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writerow(headers)
            for row in rows:
                writer.writerow([row.get(h, "") for h in headers])
    return path


def prompts(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"a lighthouse, study {i}", "steps": 4, **extra} for i in range(count)]


def make_job(
    tmp_path: Path,
    sheet: Path,
    endpoints: Sequence[str | EndpointSpec],
    *,
    attempts: int = 6,
    request_timeout: float = 20.0,
    **extra: Any,
) -> JobSpec:
    specs = tuple(e if isinstance(e, EndpointSpec) else EndpointSpec(url=e) for e in endpoints)
    return JobSpec(
        name="t",
        sheet=sheet,
        endpoints=specs,
        retry=RetrySpec(attempts=attempts, backoff_initial=0.01, backoff_max=0.05),
        timeout=TimeoutSpec(connect=2.0, request=request_timeout),
        output=OutputSpec(dir=tmp_path / "out", **extra.pop("output", {})),
        wait_all_down=extra.pop("wait_all_down", 5.0),
        **extra,
    )


def manifest(out_dir: Path) -> list[dict[str, Any]]:
    lines = (out_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def assert_exactly_once_ok(out_dir: Path, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Every row has exactly one manifest line, ok, and every file it names is on disk."""
    records = manifest(out_dir)
    assert sorted(r["row"] for r in records) == sorted(rows)
    for record in records:
        assert record["status"] == "ok", record
        assert record["error"] is None
        assert len(record["images"]) == len(record["seeds"]) >= 1
        for relative in [*record["images"], *record["extras"]]:
            assert (out_dir / relative).is_file()
    return records


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def all_text(folder: Path) -> str:
    """Every file under a folder, as text (bytes decoded leniently), for secret hunting."""
    return "\n".join(
        path.read_bytes().decode("utf-8", "replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    )


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@asynccontextmanager
async def served_sim(
    config: SimConfig,
    *,
    tls: tuple[Path, Path] | None = None,
    seen_headers: list[dict[str, str]] | None = None,
) -> AsyncIterator[tuple[str, SimStats]]:
    """A simulator app on its own site: optionally over TLS, optionally recording headers."""
    stats = SimStats()
    sim = SimApp(config, stats, lambda: None)
    if seen_headers is not None:

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            seen_headers.append(dict(request.headers))
            response: web.StreamResponse = await handler(request)
            return response

        sim.app.middlewares.insert(0, record)
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
    runner = web.AppRunner(sim.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", stats
    finally:
        sim.stopping()
        await runner.cleanup()


async def interrupt_after_first_row(process: asyncio.subprocess.Process, out: Path) -> bytes:
    """Ctrl-C a running batchgen once its first manifest line is written; its stderr."""
    for _ in range(600):
        if (out / "manifest.jsonl").exists() and manifest(out):
            break
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    return stderr


async def batchgen_run(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    """`batchgen run ARGS` in a fresh process: its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batchgen",
        "run",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, (stdout + stderr).decode()
