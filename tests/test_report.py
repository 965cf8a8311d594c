"""batchgen report: the static page, opened from file:// in a real headless Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from browserhelp import chromium
from click.testing import CliRunner
from manifesthelp import as_real_server
from playwright.sync_api import Browser, Page
from runhelp import make_job, write_sheet

from batchgen.cli import cli
from batchgen.outputs.gallery import build_report
from batchgen.outputs.manifest import MANIFEST, latest_records, scan
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


@contextmanager
def opened_report(browser: Browser, run_dir: Path) -> Iterator[Page]:
    """The folder's report from file://; failing on a console error or a network request."""
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


@pytest.fixture
def page(browser: Browser, run_dir: Path) -> Iterator[Page]:
    with opened_report(browser, run_dir) as opened:
        yield opened


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


def test_a_simulator_runs_report_says_so_and_marks_every_image(page: Page) -> None:
    banner = page.locator("#simulator")
    assert banner.is_visible()
    assert banner.inner_text().startswith(
        "SIMULATOR: All 10 images in this report are placeholders made by batchgen's built-in "
        "simulator, not a model's"
    )
    assert banner.bounding_box()["y"] < page.locator("#counts").bounding_box()["y"]
    assert page.locator("#endpoints tbody td").first.inner_text().endswith(" (simulator)")
    page.wait_for_function("document.querySelectorAll('#grid article').length === 10")
    assert page.locator("#grid article .badge.simulator").count() == 8  # not the 2 failed rows
    assert page.locator("article[data-row='10'] .badge.simulator").count() == 0
    page.locator("article[data-row='3'] .thumbs img").nth(0).click()
    page.locator("#detail").wait_for(state="visible")
    assert page.locator("#d-simulator").is_visible()
    assert '"simulator": true' in page.locator("#d-record").inner_text()


def read_data_js(run_dir: Path) -> dict[str, Any]:
    text = (run_dir / "report" / "data.js").read_text(encoding="utf-8")
    prefix, suffix = "window.BATCHGEN_REPORT = ", ";\n"
    assert text.startswith(prefix) and text.endswith(suffix)
    data: dict[str, Any] = json.loads(text[len(prefix) : -len(suffix)])
    return data


def test_data_js_has_each_keys_latest_line_once_in_row_order(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "retried"
    shutil.copytree(run_dir, folder)
    records = {record.row: record for _, _, record in scan(folder / MANIFEST) if record}
    image = records[4].images  # rows 10 and 11 retried and ok; row 4 sent again and failed
    with (folder / MANIFEST).open("ab") as manifest:
        for row in (11, 4, 10):
            again = dataclasses.replace(
                records[row],
                status="failed" if row == 4 else "ok",
                error="HTTP 500: CUDA out of memory" if row == 4 else None,
                images=() if row == 4 else image,
                image_sha256=() if row == 4 else records[4].image_sha256,
                attempts=2,
            )
            manifest.write(again.to_line())
        manifest.write(b'{"row": 12, "key": "torn')  # the run died writing this line
    build_report(folder)

    data = read_data_js(folder)
    latest = sorted(latest_records(folder).values(), key=lambda record: (record.row, record.key))
    assert [(row["row"], row["key"]) for row in data["rows"]] == [(r.row, r.key) for r in latest]
    assert [row["row"] for row in data["rows"]] == list(range(2, 12))
    statuses = {row["row"]: (row["status"], row["attempts"]) for row in data["rows"]}
    assert statuses[4] == ("failed", 2) and statuses[10] == statuses[11] == ("ok", 2)
    assert data["rows"][2]["error"] == "HTTP 500: CUDA out of memory"
    assert data["summary"] | {"duration_s": None, "images_per_s": None} == {
        "state": "finished",
        "ok": 9,
        "failed": 1,
        "not_run": 0,
        "images": 11,  # 10, less row 4's, plus rows 10 and 11's
        "simulator_images": 11,
        "duration_s": None,
        "images_per_s": None,
    }
    assert data["sheet_rows"] == 10
    assert [(e["rows"], e["images"], e["failed"]) for e in data["endpoints"]] == [(10, 11, 1)]
    assert data["filters"]["notes"] == {"notes": ["bad", "plain", "sweep", "xss"]}
    assert data["models"] == [[data["rows"][0]["model"], 8], ["?", 2]]  # 10, 11: no server model
    assert not [path.name for path in (folder / "report").iterdir() if path.suffix == ".tmp"]


@pytest.mark.parametrize("real_rows", ["all", "even"])
def test_a_real_servers_images_are_not_called_placeholders(
    browser: Browser, run_dir: Path, tmp_path: Path, real_rows: str
) -> None:
    folder = tmp_path / "real"
    shutil.copytree(run_dir, folder)
    as_real_server(folder, lambda record: real_rows == "all" or record.row % 2 == 0)
    build_report(folder)

    with opened_report(browser, folder) as page:
        page.wait_for_function("document.querySelectorAll('#grid article').length === 10")
        badges = page.locator("#grid article .badge.simulator")
        page.locator("article[data-row='4'] .thumbs img").nth(0).click()  # an even row: real
        page.locator("#detail").wait_for(state="visible")
        assert not page.locator("#d-simulator").is_visible()
        endpoint = page.locator("#endpoints tbody td").first.inner_text()
        assert endpoint.endswith(" (simulator)") == (real_rows != "all")
        if real_rows == "all":
            assert not page.locator("#simulator").is_visible()
            assert page.locator("#simulator").inner_text() == ""
            assert badges.count() == 0
        else:  # rows 3 (3 images), 5, 7, 9: 6 of the 10 images
            banner = page.locator("#simulator").inner_text()
            assert banner.startswith("SIMULATOR: 6 of 10 images in this report are placeholders")
            marked = [
                badges.nth(i).evaluate("b => b.closest('article').dataset.row")
                for i in range(badges.count())
            ]
            assert marked == ["3", "5", "7", "9"]
