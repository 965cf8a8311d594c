"""One row, many requests: templates, wildcards and X/Y/Z sweeps, sent to a simulator over HTTP."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from runhelp import make_job, manifest, no_sleep, write_png, write_sheet

from batchgen.cli import cli
from batchgen.errors import InputError
from batchgen.job import ExpandSpec, load_job
from batchgen.rows.payload import PayloadBuilder
from batchgen.rows.sheet import read_headers, read_rows
from batchgen.run.plan import validate
from batchgen.run.replay import replay
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def sent(sim: SimServer) -> list[dict[str, Any]]:
    return [dict(body) for body in sim.stats.history]


def results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


async def test_a_row_expands_into_the_product_of_its_lists_ranges_and_variants(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = [
        {
            "prompt": "a {red|green} car",
            "steps": "4, 6",
            "cfg_scale": "5.5-6.5 (+0.5)",
            "width": "512-640 [2]",
            "sampler": "Euler a, DPM++ 2M",
            "note": "n",
        },
        {"prompt": "a plain row", "steps": 4},
    ]
    job = make_job(tmp_path, write_sheet(tmp_path / "s.csv", rows), [sim.url])

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0, summary.stopped_reason
    bodies = sent(sim)
    combos = {
        (b["prompt"], b["steps"], b["cfg_scale"], b["width"], b["sampler_name"])
        for b in bodies
        if b["prompt"] != "a plain row"
    }
    assert combos == {
        (p, s, c, w, n)
        for p in ("a red car", "a green car")
        for s in (4, 6)
        for c in (5.5, 6.0, 6.5)
        for w in (512, 640)
        for n in ("Euler a", "DPM++ 2M")
    }
    assert len(bodies) == 2 * 2 * 3 * 2 * 2 + 1
    assert len({b["seed"] for b in bodies}) == len(bodies)  # a derived seed per expansion
    records = manifest(job.out_dir)
    swept = [r for r in records if r["row"] == 2]
    assert sorted(r["expansion"] for r in swept) == list(range(48))
    assert {r["expansions"] for r in swept} == {48}
    first = min(swept, key=lambda r: r["expansion"])
    assert first["templates"] == {
        "prompt": "a {red|green} car",
        "steps": "4, 6",
        "cfg_scale": "5.5-6.5 (+0.5)",
        "width": "512-640 [2]",
        "sampler": "Euler a, DPM++ 2M",
    }
    assert first["resolved"] == {
        "prompt": "a red car",
        "steps": 4,
        "cfg_scale": 5.5,
        "width": 512,
        "sampler": "Euler a",
    }
    assert first["metadata"] == {"note": "n"}
    plain = next(r for r in records if r["row"] == 3)
    assert "expansion" not in plain and "templates" not in plain  # a plain line as before
    lines = results(job.out_dir)
    assert len(lines) == 49
    assert [line["expansion"] for line in lines if line["row"] == "2"] == [
        str(i) for i in range(48)
    ]
    assert lines[0]["prompt"] == "a red car" and lines[0]["status"] == "ok"
    assert lines[-1]["expansion"] == "" and lines[-1]["prompt"] == "a plain row"


async def test_variants_weights_choices_nesting_and_wildcard_files_in_template_order(
    tmp_path: Path, sim: SimServer
) -> None:
    wildcards = tmp_path / "wildcards"
    wildcards.mkdir()
    (wildcards / "weather.txt").write_text("sunny\nrainy\n# a comment\n", encoding="utf-8")
    (wildcards / "time.yaml").write_text("time:\n  - dawn\n  - dusk\n", encoding="utf-8")
    (wildcards / "mood.json").write_text(json.dumps({"mood": ["calm", "__weather__"]}))
    rows = [
        {"prompt": "{2$$a|b|c}"},
        {"prompt": "{0.2::x|3::y} {house|tree {1|2}}"},
        {"prompt": "__weather__ at __time__", "negative_prompt": "{blur|noise}"},
        {"prompt": "__mood__"},
    ]
    job = make_job(tmp_path, write_sheet(tmp_path / "s.csv", rows), [sim.url])

    await run_batch(job, RunOptions(sleep=no_sleep))

    by_row: dict[int, list[tuple[str, str]]] = {}
    for record in sorted(manifest(job.out_dir), key=lambda r: (r["row"], r["expansion"])):
        by_row.setdefault(record["row"], []).append(
            (record["payload"]["prompt"], record["payload"].get("negative_prompt", ""))
        )
    assert [p for p, _ in by_row[2]] == ["a,b", "a,c", "b,a", "b,c", "c,a", "c,b"]
    assert [p for p, _ in by_row[3]] == [
        "x house",
        "x tree 1",
        "x tree 2",
        "y house",
        "y tree 1",
        "y tree 2",
    ]
    assert by_row[4] == [  # wildcard lines in file order, the prompt before the negative
        ("sunny at dawn", "blur"),
        ("sunny at dawn", "noise"),
        ("sunny at dusk", "blur"),
        ("sunny at dusk", "noise"),
        ("rainy at dawn", "blur"),
        ("rainy at dawn", "noise"),
        ("rainy at dusk", "blur"),
        ("rainy at dusk", "noise"),
    ]
    assert [p for p, _ in by_row[5]] == ["calm", "sunny", "rainy"]  # a wildcard in a wildcard


async def test_random_mode_draws_count_per_row_and_a_rerun_draws_the_same(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = [
        {"prompt": "a {cat|dog|fox|owl|elk} in {rain|snow|fog}", "steps": "4, 5"},
        {"prompt": "{red|blue|green} kite", "expand.count": 3},
        {"prompt": "{a|b} all of them", "expand.mode": "combinatorial"},
    ]
    sheet = write_sheet(tmp_path / "s.csv", rows)
    first = make_job(tmp_path / "1", sheet, [sim.url], expand=ExpandSpec(mode="random", count=6))
    again = make_job(tmp_path / "2", sheet, [sim.url], expand=ExpandSpec(mode="random", count=6))

    await run_batch(first, RunOptions(sleep=no_sleep))
    await run_batch(again, RunOptions(sleep=no_sleep))

    def drawn(out: Path) -> list[tuple[int, int, str, int]]:
        return sorted(
            (r["row"], r["expansion"], r["payload"]["prompt"], r["seeds"][0]) for r in manifest(out)
        )

    one = drawn(first.out_dir)
    assert one == drawn(again.out_dir)  # same prompts, same seeds, in another folder
    assert len([r for r in one if r[0] == 2]) == 6 * 2  # draws x the steps list
    assert len({p for row, _, p, _ in one if row == 2}) > 1
    assert len([r for r in one if r[0] == 3]) == 3  # expand.count overrides the job's 6
    assert sorted(p for row, _, p, _ in one if row == 4) == ["a all of them", "b all of them"]
    assert len({seed for *_, seed in one}) == len(one)


async def test_a_plain_row_keeps_its_key_and_request_beside_sweeps(
    tmp_path: Path, sim: SimServer
) -> None:
    plain = {"prompt": "a lighthouse", "steps": 4, "cfg_scale": 7}
    alone = write_sheet(tmp_path / "alone.csv", [plain])
    builder_job = make_job(tmp_path, alone, [sim.url])
    builder = PayloadBuilder(builder_job, read_headers(alone))
    before = builder.build(next(read_rows(alone)))
    mixed = write_sheet(
        tmp_path / "mixed.csv", [{"prompt": "a {b|c}", "steps": "4, 5", "cfg_scale": 7}, plain]
    )
    job = make_job(tmp_path, mixed, [sim.url])

    await run_batch(job, RunOptions(sleep=no_sleep))

    record = next(r for r in manifest(job.out_dir) if r["row"] == 3)
    assert record["key"] == before.key
    assert record["payload"] == dict(before.body)


async def test_double_underscores_that_name_no_wildcard_stay_plain_text(
    tmp_path: Path, sim: SimServer
) -> None:
    prompts = ["snake__case and a__b", "<img src=x onerror=window.__pwned=1>"]
    job = make_job(
        tmp_path, write_sheet(tmp_path / "s.csv", [{"prompt": p} for p in prompts]), [sim.url]
    )

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0, summary.stopped_reason
    assert sorted(b["prompt"] for b in sent(sim)) == sorted(prompts)


async def test_a_seed_cell_gives_the_seeds_and_file_names_can_use_swept_values(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = [{"prompt": "p", "seed": "100-102", "cfg": "5, 7.5", "model": "v1-5-pruned-emaonly"}]
    job = make_job(
        tmp_path,
        write_sheet(tmp_path / "s.csv", rows),
        [sim.url],
        output={"filename": "{row}-{expansion}-cfg{cfg_scale}-{seed}-{checkpoint}"},
    )

    await run_batch(job, RunOptions(sleep=no_sleep))

    records = sorted(manifest(job.out_dir), key=lambda r: r["expansion"])
    assert [r["seeds"][0] for r in records] == [100, 100, 101, 101, 102, 102]
    names = [Path(r["images"][0]).name for r in records]
    assert names[0] == "2-0-cfg5.0-100-v1-5-pruned-emaonly.png"
    assert names[1] == "2-1-cfg7.5-100-v1-5-pruned-emaonly.png"


async def test_a_new_list_value_or_wildcard_line_sends_only_the_new_expansions(
    tmp_path: Path, sim: SimServer
) -> None:
    wildcards = tmp_path / "wildcards"
    wildcards.mkdir()
    colors = wildcards / "color.txt"
    colors.write_text("red\nblue\n", encoding="utf-8")
    sheet = tmp_path / "s.csv"
    write_sheet(sheet, [{"prompt": "a __color__ boat", "steps": "4, 5"}, {"prompt": "plain"}])
    job = make_job(tmp_path, sheet, [sim.url])
    await run_batch(job, RunOptions(sleep=no_sleep))
    assert len(sent(sim)) == 5
    seeds_before = {r["key"]: r["seeds"][0] for r in manifest(job.out_dir)}

    colors.write_text("red\nblue\ngreen\n", encoding="utf-8")
    write_sheet(sheet, [{"prompt": "a __color__ boat", "steps": "4, 5, 6"}, {"prompt": "plain"}])
    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.plan.done == 5 and summary.plan.to_go == 5
    new = sorted((b["prompt"], b["steps"]) for b in sent(sim)[5:])
    assert new == [
        ("a blue boat", 6),
        ("a green boat", 4),
        ("a green boat", 5),
        ("a green boat", 6),
        ("a red boat", 6),
    ]
    latest = {r["key"]: r["seeds"][0] for r in manifest(job.out_dir)}
    assert all(latest[key] == seed for key, seed in seeds_before.items())  # old ones untouched


async def test_a_checkpoint_sweep_switches_each_endpoint_as_often_as_the_plain_sheet(
    tmp_path: Path,
) -> None:
    models = ("alpha", "beta", "gamma")
    swept = [{"prompt": f"p{i} {{x|y}}", "model": ", ".join(models)} for i in range(8)]
    plain = [
        {"prompt": f"p{i} {v}", "model": m} for i in range(8) for m in models for v in ("x", "y")
    ]
    switches = []
    for name, rows in (("swept", swept), ("plain", plain)):
        async with (
            SimServer(_models_config(models)) as one,
            SimServer(_models_config(models)) as two,
        ):
            job = make_job(
                tmp_path / name, write_sheet(tmp_path / f"{name}.csv", rows), [one.url, two.url]
            )
            summary = await run_batch(job, RunOptions(sleep=no_sleep))
            assert summary.ok == 48
            switches.append(one.stats.switches + two.stats.switches)
    assert switches[0] <= switches[1]
    assert switches[0] <= len(models) + 1  # each checkpoint loaded about once per endpoint


def _models_config(models: tuple[str, ...]) -> SimConfig:
    return SimConfig(models=models, switch_s=0.05)


@pytest.mark.parametrize(
    ("cell", "column", "message"),
    [
        ({"prompt": "a {red|green car"}, "prompt", "'{' without its '}'"),
        ({"prompt": "a red} car"}, "prompt", "'}' without its '{'"),
        ({"prompt": "a __nowhere__ car"}, "prompt", "no wildcard file __nowhere__"),
        ({"prompt": "p", "steps": "30-10"}, "steps", "runs backwards"),
        ({"prompt": "p", "cfg_scale": "5-9 (+0)"}, "cfg_scale", "zero step"),
        ({"prompt": "p", "steps": "20, many"}, "steps", "many"),
        ({"prompt": "p", "seed": "1-1000000"}, "seed", "more than 100,000 images"),
        ({"prompt": "{a|b|c|d|e|f|g|h|i|j} " * 6}, "prompt", "more than 100,000 images"),
        ({"prompt": "{a|b}", "expand.mode": "shuffle"}, "expand.mode", "unknown mode"),
    ],
)
async def test_a_bad_template_or_sweep_names_row_and_column_and_nothing_is_sent(
    tmp_path: Path, sim: SimServer, cell: dict[str, Any], column: str, message: str
) -> None:
    rows = [{"prompt": "fine {a|b}"}, cell]
    job = make_job(tmp_path, write_sheet(tmp_path / "s.csv", rows), [sim.url])

    with pytest.raises(InputError) as caught:
        await run_batch(job, RunOptions(sleep=no_sleep))

    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert (problems[0].row, problems[0].column) == (3, column)
    assert message in problems[0].message
    assert problems[0].hint
    assert sent(sim) == []


def test_max_images_counts_batch_size_and_comes_from_the_job(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "steps": "1-50", "batch_size": 4}]
    sheet = write_sheet(tmp_path / "s.csv", rows)
    assert validate(make_job(tmp_path, sheet, ["sim://"])).images == 200
    with pytest.raises(InputError, match="more than 150 images"):
        validate(make_job(tmp_path, sheet, ["sim://"], expand=ExpandSpec(max_images=150)))


async def test_a_sweep_killed_half_way_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    wildcards = tmp_path / "wildcards"
    wildcards.mkdir()
    (wildcards / "boat.txt").write_text("canoe\nferry\nyacht\nraft\n", encoding="utf-8")
    write_sheet(
        tmp_path / "s.csv", [{"prompt": "a __boat__ at sea", "steps": "4-8", "cfg": "6, 7"}]
    )
    async with SimServer(SimConfig(ms_per_step=10)) as sim:
        job_file = tmp_path / "job.toml"
        job_file.write_text(
            f'sheet = "s.csv"\nendpoints = ["{sim.url}"]\n[output]\ndir = "out"\n',
            encoding="utf-8",
        )
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchgen",
            "run",
            str(job_file),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(600):
            if len(_lines(out)) >= 10:
                break
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        done_before = {r["payload"]["seed"] for r in _lines(out) if r["status"] == "ok"}
        sent_before = len(sim.stats.history)
        assert 10 <= len(done_before) < 40, "the kill should land half-way"

        summary = await run_batch(load_job(job_file), RunOptions(sleep=no_sleep))

        assert summary.exit_code == 0
        assert summary.plan.done == len(done_before)
        sent_after = {body["seed"] for body in sim.stats.history[sent_before:]}
        assert not sent_after & done_before, "an expansion already done was sent again"
        records = [r for r in _lines(out) if r["status"] == "ok"]
        assert len(records) == len({r["key"] for r in records}) == 40
        assert sorted(r["expansion"] for r in records) == list(range(40))
        assert len(results(out)) == 40


def _lines(out: Path) -> list[dict[str, Any]]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


async def test_retry_failed_sends_only_the_expansions_that_failed(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", [{"prompt": "{a|b|c|d} tower", "steps": "4-8"}])
    async with SimServer(SimConfig(fail_rate=0.3, fault_seed=5)) as sim:
        job = make_job(tmp_path, sheet, [sim.url], attempts=1)
        first = await run_batch(job, RunOptions(sleep=no_sleep))
        failed = {r["key"] for r in manifest(job.out_dir) if r["status"] == "failed"}
        assert 0 < first.failed == len(failed) < 20
        await sim.set_config(SimConfig())
        sent_before = len(sim.stats.history)

        again = await run_batch(job, RunOptions(retry_failed=True, sleep=no_sleep))

        assert again.exit_code == 0 and again.ok == len(failed)
        resent = sim.stats.history[sent_before:]
        assert len(resent) == len(failed)
        latest = {r["key"]: r for r in manifest(job.out_dir)}
        assert all(latest[key]["status"] == "ok" for key in failed)
        assert {(b["prompt"], b["steps"]) for b in resent} == {
            (latest[k]["payload"]["prompt"], latest[k]["payload"]["steps"]) for k in failed
        }


def test_dry_run_and_check_print_each_rows_expansions_and_the_totals(tmp_path: Path) -> None:
    rows = [
        {"prompt": "{a|b|c} hill", "steps": "4, 5", "batch_size": 2},
        {"prompt": "plain"},
        {"prompt": "p", "sampler": "Euler a, Eulr"},
    ]
    sheet = write_sheet(tmp_path / "s.csv", rows)
    runner = CliRunner()

    dry = runner.invoke(
        cli, ["run", str(sheet), "--endpoint", "sim://", "--out", str(tmp_path / "o"), "--dry-run"]
    )
    checked = runner.invoke(cli, ["check", str(sheet), "--endpoint", "sim://"])

    assert dry.exit_code == 0, dry.output
    assert "9 requests (15 images) from 3 rows, 2 of them expanding" in dry.stderr
    assert "# row 2: 6 requests" in dry.stderr and "# row 4: 2 requests" in dry.stderr
    assert "row 3:" not in dry.stderr
    assert checked.exit_code == 2
    assert "Eulr" in checked.stderr and "row 4" in checked.stderr  # a listed name is checked
    assert not (tmp_path / "o").exists()
    fine = write_sheet(tmp_path / "fine.csv", rows[:2])
    passed = runner.invoke(cli, ["check", str(fine), "--endpoint", "sim://"])
    assert passed.exit_code == 0, passed.output
    assert "2 rows expand into 7 requests (13 images), all valid" in passed.stdout
    assert "row 2: 6 requests" in passed.stdout


async def test_the_sample_sweep_job_runs_on_the_simulator(tmp_path: Path) -> None:
    job = load_job(JOBS / "sweep.toml", out=tmp_path / "o")

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0, summary.stopped_reason
    assert summary.plan.sheet_rows == 5 and summary.ok == 12 + 20 + 8 + 6 + 1
    records = manifest(job.out_dir)
    assert {r["seeds"][0] for r in records if r["row"] == 4} == {1, 2, 3, 4}
    assert len(results(job.out_dir)) == summary.ok


async def test_replay_sends_each_expansion_again_and_says_which_it_was(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = [{"prompt": "a {red|blue} kite", "steps": "4, 5"}, {"prompt": "plain"}]
    job = make_job(tmp_path, write_sheet(tmp_path / "s.csv", rows), [sim.url])
    await run_batch(job, RunOptions(sleep=no_sleep))

    summary = await replay(job.out_dir, tmp_path / "again", endpoints=[sim.url])

    assert summary.exit_code == 0 and len(summary.rows) == 5
    assert [row.describe().split(":")[0] for row in summary.rows] == [
        "row 2, expansion 0",
        "row 2, expansion 1",
        "row 2, expansion 2",
        "row 2, expansion 3",
        "row 3",
    ]
    again = {r["key"]: r for r in manifest(tmp_path / "again")}
    for record in manifest(job.out_dir):
        copy = again[record["key"]]
        assert (copy.get("expansion"), copy.get("resolved")) == (
            record.get("expansion"),
            record.get("resolved"),
        )


def test_a_bare_sheet_gets_the_same_defaults_and_set_changes_them(tmp_path: Path) -> None:
    rows = [{"prompt": "{a|b|c} {d|e}", "steps": [20, 30]}]  # JSONL: a list is a sweep too
    sheet = write_sheet(tmp_path / "s.jsonl", rows)
    (tmp_path / "wildcards").mkdir()

    bare = load_job(sheet)
    drawn = load_job(sheet, set_fields={"expand.mode": "random", "expand.count": "4"})

    assert bare.expand == ExpandSpec() and bare.wildcard_folder == tmp_path / "wildcards"
    assert validate(bare).total == 6 * 2
    assert (drawn.expand.mode, drawn.expand.count) == ("random", 4)
    assert validate(drawn).total == 4 * 2


async def test_controlnet_and_hires_fields_sweep_like_any_other(
    tmp_path: Path, sim: SimServer
) -> None:
    write_png(tmp_path / "depth.png")
    row = {
        "prompt": "a hall",
        "controlnet.0.image": "depth.png",
        "controlnet.0.module": "depth_midas, canny",
        "controlnet.0.model": "control_v11f1p_sd15_depth",
        "controlnet.0.weight": "0.5-1 [3]",
        "enable_hr": "true",
        "hr_scale": "1.5, 2",
    }
    job = make_job(tmp_path, write_sheet(tmp_path / "s.csv", [row]), [sim.url])

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0, summary.stopped_reason
    units = [(b["alwayson_scripts"]["controlnet"]["args"][0], b["hr_scale"]) for b in sent(sim)]
    assert sorted((u["module"], u["weight"], scale) for u, scale in units) == sorted(
        (module, weight, scale)
        for module in ("depth_midas", "canny")
        for weight in (0.5, 0.75, 1.0)
        for scale in (1.5, 2.0)
    )
