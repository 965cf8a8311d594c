"""Real servers: basic auth, extra headers and TLS; no secret reaches an output file or a log."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from runhelp import (
    all_text,
    assert_exactly_once_ok,
    make_job,
    no_sleep,
    prompts,
    self_signed,
    served_sim,
    write_sheet,
)

from batchgen.errors import ConfigError
from batchgen.job import EndpointSpec
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig

PASSWORD = "s3cr3t@pw!"  # '@' and '!' must be percent-escaped in a URL
TOKEN = "tok-SECRET-4711"
SECRETS = ("s3cr3t", "s3cr3t%40", TOKEN, base64.b64encode(b"alice:" + PASSWORD.encode()).decode())


async def test_basic_auth_and_headers_reach_the_server_and_nowhere_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BG_TOKEN", TOKEN)
    seen: list[dict[str, str]] = []
    config = SimConfig(api_auth=f"alice:{PASSWORD}", fail_rate=0.3, fault_seed=1)
    async with served_sim(config, seen_headers=seen) as (url, stats):
        host = url.removeprefix("http://")
        spec = EndpointSpec(
            url=f"http://alice:s3cr3t%40pw%21@{host}", headers_env={"X-Api-Key": "BG_TOKEN"}
        )
        sheet = write_sheet(tmp_path / "rows.csv", prompts(6))
        job = make_job(tmp_path, sheet, [spec])
        summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0
    records = assert_exactly_once_ok(job.out_dir, range(2, 8))
    assert stats.faults["fail"] > 0  # error paths were taken too
    assert {r["endpoint"] for r in records} == {url}
    generation_headers = [h for h in seen if h.get("Content-Type") == "application/json"]
    assert generation_headers and all(h["X-Api-Key"] == TOKEN for h in generation_headers)
    assert all(h["Authorization"].startswith("Basic ") for h in generation_headers)
    leaks = [all_text(job.out_dir), caplog.text, repr(summary), str(summary.endpoints)]
    for secret in SECRETS:
        assert not any(secret in text for text in leaks), secret


async def test_credentials_from_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BG_AUTH", f"alice:{PASSWORD}")
    async with served_sim(SimConfig(api_auth=f"alice:{PASSWORD}")) as (url, _):
        sheet = write_sheet(tmp_path / "rows.jsonl", prompts(2))
        job = make_job(tmp_path, sheet, [EndpointSpec(url=url, auth_env="BG_AUTH")])
        summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0
    assert not any(secret in all_text(job.out_dir) for secret in SECRETS)


async def test_refused_credentials_stop_the_run_before_anything_is_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with served_sim(SimConfig(api_auth="alice:right")) as (url, stats):
        host = url.removeprefix("http://")
        sheet = write_sheet(tmp_path / "rows.csv", prompts(2))
        job = make_job(tmp_path, sheet, [f"http://alice:s3cr3t-wrong@{host}"])
        with pytest.raises(ConfigError) as raised:
            await run_batch(job, RunOptions(sleep=no_sleep))

    message = str(raised.value)
    assert "401" in message and url in message
    assert "s3cr3t" not in message + caplog.text
    assert stats.history == [] and not job.out_dir.exists()


async def test_tls_endpoint_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    sheet = write_sheet(tmp_path / "rows.csv", prompts(3))
    async with served_sim(SimConfig(), tls=(cert, key)) as (url, stats):
        assert url.startswith("https://")
        untrusted = make_job(tmp_path, sheet, [url])
        with pytest.raises(ConfigError, match="ca_file"):
            await run_batch(untrusted, RunOptions(sleep=no_sleep))
        assert stats.history == []

        trusted = make_job(tmp_path, sheet, [EndpointSpec(url=url, ca_file=cert)])
        assert (await run_batch(trusted, RunOptions(sleep=no_sleep))).exit_code == 0
        assert_exactly_once_ok(trusted.out_dir, [2, 3, 4])

        unverified = make_job(
            tmp_path, sheet, [EndpointSpec(url=url, verify=False)], output={"filename": "u{row}"}
        )
        summary = await run_batch(unverified, RunOptions(sleep=no_sleep, fresh=True))
        assert summary.exit_code == 0 and summary.ok == 3
