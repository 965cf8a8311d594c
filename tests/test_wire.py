"""The request is made before the client: as each endpoint's flavor needs it, once per attempt."""

from __future__ import annotations

import ast
from pathlib import Path

from runhelp import make_job, manifest, prompts, simulators, write_sheet

from batchgen.records import Flavor, Request, Task, WireRequest
from batchgen.rows.wire import RowRequests
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig

PACKAGE = Path(__file__).parent.parent / "batchgen"


async def test_each_endpoint_gets_the_body_its_flavor_needs(tmp_path: Path) -> None:
    hires = {"enable_hr": True, "denoising_strength": 0.5, "hr_scale": 1.5}
    sheet = write_sheet(tmp_path / "sheet.csv", prompts(16, **hires))
    fast = SimConfig(ms_per_step=2.0)
    async with simulators(fast, SimConfig(flavor="forge", ms_per_step=2.0)) as (a1111, forge):
        job = make_job(tmp_path, sheet, [a1111.url, forge.url], check=False)
        summary = await run_batch(job, RunOptions())
    assert summary.ok == 16 and summary.failed == 0
    assert a1111.stats.history and forge.stats.history, "both endpoints took rows"
    # Forge's hires fix fails without these (a1111-api.md); A1111 is sent the row as it is.
    assert all(
        body["hr_additional_modules"] == ["Use same choices"] and body["hr_cfg"] == 7.0
        for body in forge.stats.history
    )
    assert not any("hr_additional_modules" in body for body in a1111.stats.history)
    # The manifest keeps the row's own body, whichever flavor sent it.
    assert not any("hr_additional_modules" in line["payload"] for line in manifest(job.out_dir))


def test_an_attempts_copies_share_one_request_per_flavor() -> None:
    made: list[Flavor] = []

    def make(task: Task, flavor: Flavor) -> Request:
        made.append(flavor)
        return WireRequest(task.route, {**task.body, "for": flavor})

    requests = RowRequests(Task(2, "k", "txt2img", {"prompt": "x"}, None), make)
    first, copy, other = requests.to("a1111"), requests.to("a1111"), requests.to("forge")
    assert first is copy and made == ["a1111", "forge"]
    assert isinstance(other, WireRequest) and other.body["for"] == "forge"


def test_no_client_module_imports_the_row_stage() -> None:
    for module in (PACKAGE / "backends" / "a1111.py", PACKAGE / "backends" / "comfy" / "client.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        rows = {name for name in imported if name and name.startswith("batchgen.rows")}
        assert not rows, f"{module.name} imports the row stage: {rows}"
        assert "batchgen.backends.comfy.workflow" not in imported, "the binding is the row stage's"
