"""batchgen report: the static page, opened from file:// in a real headless Chromium."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from browserhelp import chromium
from click.testing import CliRunner
from playwright.sync_api import Browser, Page
from runhelp import make_job, write_sheet

from batchgen.cli import cli
from batchgen.outputs.gallery import build_report
from batchgen.run.runner import run_batch

INJECTED = "<img src=x onerror=window.__pwned=1>"
INJECTED_SCRIPT = "<img src=y onerror=window.__pwned=2>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on the simulator: an injection prompt, a sweep, two rows the server refuses."""
    tmp_path = tmp_path_factory.mktemp("report")
    rows = [
        {"prompt": INJECTED, "notes": "xss"},
        {"prompt": "a red fox in the snow", "batch_size": 3, "notes": "sweep"},
        *({"prompt": f"a lighthouse, study {i}", "notes": "plain"} for i in range(6)),
        {"prompt": "a broken script row", "script_name": "nope", "notes": "bad"},
        {"prompt": "another broken row", "script_name": INJECTED_SCRIPT, "notes": "bad"},
    ]
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    job = make_job(
        tmp_path,
        sheet,
        ["sim://"],
        attempts=1,
        check=False,
        columns={"notes": ""},
        defaults={"steps": 4},
    )
    with ThreadPoolExecutor(1) as thread:  # a loop of its own: Playwright's may be running here
        summary = thread.submit(asyncio.run, run_batch(job)).result()
    assert (summary.ok, summary.failed) == (8, 2)
    return job.out_dir


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as opened:
        yield opened


@pytest.fixture
def page(browser: Browser, run_dir: Path) -> Iterator[Page]:
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda r: None if r.url.startswith("file://") else problems.append(r.url))
    page.goto((run_dir / "report" / "index.html").as_uri())
    page.wait_for_selector("#grid article")
    yield page
    assert problems == [], f"console errors or network requests: {problems}"
    page.close()


def test_the_run_writes_the_report_with_its_data_beside_the_page(run_dir: Path) -> None:
    report = run_dir / "report"
    page = (report / "index.html").read_text(encoding="utf-8")
    assert '<script src="data.js">' in page
    assert "lighthouse" not in page  # the data is in data.js, not inlined
    assert "a lighthouse, study 5" in (report / "data.js").read_text(encoding="utf-8")
    assert len(list((report / "thumbs").glob("*.jpg"))) == 6 + 3 + 1


def test_page_loads_from_file_with_thumbnails_and_a_summary(page: Page) -> None:
    assert page.locator("#grid article").count() == 10  # one group per sheet row
    sweep = page.locator("article[data-row='3'] .thumbs img")
    assert sweep.count() == 3  # a row of three images is one group
    page.wait_for_function(
        "[...document.querySelectorAll('#grid img')].filter(i => i.naturalWidth > 0).length >= 8"
    )
    counts = page.locator("#counts").inner_text()
    assert "8\nok" in counts and "2\nfailed" in counts and "0\nnot run" in counts
    assert "rows)" in page.locator("#models").inner_text()


def test_failed_rows_come_first_with_the_servers_error_and_a_retry_command(
    page: Page, run_dir: Path
) -> None:
    failed = page.locator("#failed-rows tbody tr")
    assert failed.count() == 2
    first = failed.nth(0).inner_text()
    assert "10" in first and "Script 'nope' not found" in first
    assert "1 \u00d7 HTTP 422: Script 'nope' not found" in page.locator("#errors").inner_text()
    assert page.locator("#failed").bounding_box()["y"] < page.locator("#grid").bounding_box()["y"]
    command = page.locator("#retry").inner_text()
    assert command.startswith("batchgen run ") and "--retry-failed" in command
    assert f"--out {run_dir}" in command


def test_a_text_filter_narrows_the_grid(page: Page) -> None:
    page.fill("#f-text", "lighthouse study 3")
    page.wait_for_function("document.querySelectorAll('#grid article').length === 1")
    assert page.locator("#grid article").get_attribute("data-row") == "7"
    page.fill("#f-text", "")
    page.select_option("#f-status", "failed")
    page.wait_for_function("document.querySelectorAll('#grid article').length === 2")
    page.select_option("#f-status", "")
    page.select_option("#f-notes select", "sweep")
    page.wait_for_function("document.querySelectorAll('#grid article').length === 1")


def test_markup_in_prompts_and_errors_is_shown_as_text_and_runs_nothing(page: Page) -> None:
    page.wait_for_timeout(300)  # time for any injected onerror to fire
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#grid article[data-row='2'] .prompt").inner_text() == INJECTED
    assert INJECTED_SCRIPT in page.locator("#failed-rows").inner_text()
    assert page.locator("#grid img[src='x'], #failed-rows img").count() == 0


def test_a_click_shows_the_full_image_request_and_infotext(page: Page) -> None:
    page.locator("article[data-row='3'] .thumbs img").nth(1).click()
    dialog = page.locator("#detail")
    dialog.wait_for(state="visible")
    page.wait_for_function("document.getElementById('d-image').naturalWidth === 512")
    assert '"batch_size": 3' in page.locator("#d-request").inner_text()
    assert "Seed: " in page.locator("#d-infotext").inner_text()
    assert "a red fox in the snow" in page.locator("#d-infotext").inner_text()
    record = page.locator("#d-record").inner_text()
    assert '"row": 3' in record and '"duration_s"' in record and '"seeds"' in record


def test_a_second_report_makes_no_thumbnail_again(run_dir: Path) -> None:
    thumbs = sorted((run_dir / "report" / "thumbs").iterdir())
    before = {path: path.stat().st_mtime_ns for path in thumbs}
    os.utime(run_dir / "manifest.jsonl")
    build_report(run_dir)
    assert {path: path.stat().st_mtime_ns for path in thumbs} == before
    assert sorted((run_dir / "report" / "thumbs").iterdir()) == thumbs


def test_the_report_command(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0
    assert result.output.strip() == str(run_dir / "report" / "index.html")
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no manifest.jsonl here" in result.output
