"""OutputStore on real files: what a crash can leave behind, and what is taken for a result."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.errors import ConfigError
from batchgen.outputs.manifest import MANIFEST, latest_records
from batchgen.outputs.store import MISSING, OutputStore, folder_in_use, peek_state
from batchgen.records import Generation, Result, Task

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10


def task(row: int, key: str | None = None) -> Task:
    return Task(row, key or f"k{row}-0", "txt2img", {"prompt": f"p{row}", "seed": 10 + row}, None)


def ok(row: int, data: bytes = PNG, key: str | None = None) -> Result:
    generation = Generation((data,), (), (10 + row,), "m", "abc123", None, "v1.10.1", {})
    return Result(task(row, key), "ok", "sim://x", 1, None, generation, 0.0, 0.1)


def failed(row: int) -> Result:
    return Result(task(row), "failed", "sim://x", 3, "HTTP 500: out of memory", None, 0.0, 0.1)


def store(out: Path) -> OutputStore:
    return OutputStore(out, "job", "{row:06d}-{index:02d}-{seed}", out)


def test_record_writes_the_images_then_a_complete_line(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.open().rows == {}
    line = s.record(ok(2), {"prompt": "p2"})
    s.close()
    assert line.images == ("images/000002-00-12.png",)
    assert (tmp_path / line.images[0]).read_bytes() == PNG
    assert line.image_sha256 == (hashlib.sha256(PNG).hexdigest(),)
    raw = (tmp_path / MANIFEST).read_bytes()
    assert raw.endswith(b"\n") and json.loads(raw) == line.to_json()
    assert not list(tmp_path.rglob("*.tmp"))


def test_latest_record_per_key_decides(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open()
    s.record(failed(2), {})
    s.record(failed(3), {})
    s.record(ok(2), {})
    s.close()
    state = store(tmp_path).open()
    assert state.done == {"k2-0"}
    assert state.failed == {"k3-0"}
    assert [r.status for r in latest_records(tmp_path).values()] == ["failed", "ok"]


def test_a_torn_last_line_is_dropped_and_its_row_sent_again(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open()
    s.record(ok(2), {})
    s.record(ok(3), {})
    s.close()
    manifest = tmp_path / MANIFEST
    whole = manifest.read_bytes()
    first_end = whole.index(b"\n") + 1
    manifest.write_bytes(whole[: first_end + 40])  # the crash tore the second line
    assert peek_state(tmp_path).done == {"k2-0"}
    assert manifest.stat().st_size == first_end + 40, "peek_state changes nothing"
    state = store(tmp_path).open()
    assert state.done == {"k2-0"}
    assert manifest.read_bytes() == whole[:first_end]


def test_a_complete_line_without_its_newline_counts_as_torn(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open()
    s.record(ok(2), {})
    s.close()
    manifest = tmp_path / MANIFEST
    manifest.write_bytes(manifest.read_bytes().rstrip(b"\n"))
    assert store(tmp_path).open().rows == {}
    assert manifest.read_bytes() == b""


def test_an_unreadable_middle_line_is_skipped(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open()
    s.record(ok(2), {})
    s.close()
    with (tmp_path / MANIFEST).open("ab") as handle:
        handle.write(b"{not json\n")
    s = store(tmp_path)
    s.open()
    s.record(ok(3), {})
    s.close()
    assert store(tmp_path).open().done == {"k2-0", "k3-0"}


def test_stale_tmp_files_are_removed_on_open(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    stale = tmp_path / "images" / "000002-00-12.png.tmp"
    stale.write_bytes(PNG[:5])
    (tmp_path / "results.csv.tmp").write_text("row\n")
    store(tmp_path).open()
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_orphan_image_is_replaced_not_suffixed_or_counted(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    orphan = tmp_path / "images" / "000002-00-12.png"
    orphan.write_bytes(b"written before the crash, never recorded")
    s = store(tmp_path)
    state = s.open()
    assert state.rows == {}, "a file without a record is not a result"
    line = s.record(ok(2), {})
    s.close()
    assert line.images == ("images/000002-00-12.png",)
    assert orphan.read_bytes() == PNG
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000002-00-12.png"]


def test_a_name_a_record_owns_is_never_overwritten(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open()
    first = s.record(ok(2, PNG, key="a-0"), {})
    second = s.record(ok(2, PNG + b"x", key="b-0"), {})  # an edited row 2, same seed
    s.close()
    assert first.images != second.images
    assert (tmp_path / first.images[0]).read_bytes() == PNG


def test_an_ok_row_whose_image_is_gone_is_sent_again(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open()
    line = s.record(ok(2), {})
    s.record(ok(3), {})
    s.close()
    (tmp_path / line.images[0]).unlink()
    state = store(tmp_path).open()
    assert state.rows["k2-0"].status == MISSING
    assert state.done == {"k3-0"} and state.failed == {"k2-0"}
    s = store(tmp_path)
    s.open()
    again = s.record(ok(2), {})
    s.close()
    assert again.images == line.images, "the freed name is used again"
    assert store(tmp_path).open().done == {"k2-0", "k3-0"}


def test_results_sheet_shows_each_rows_latest_outcome(tmp_path: Path) -> None:
    from batchgen.records import SheetRow

    rows = [SheetRow(2, {"prompt": "p2"}), SheetRow(3, {"prompt": "p3"}), SheetRow(4, {})]

    def results(keys: list[str | None]) -> list[str]:
        s.write_results(zip(rows, keys, strict=True), ["prompt"], xlsx=False)
        s.close()
        return (tmp_path / "results.csv").read_text(encoding="utf-8-sig").splitlines()

    s = store(tmp_path)
    s.open()
    s.record(failed(3), {})
    s.record(ok(2), {})
    s.close()
    s.open()  # an earlier run's outcomes come from the manifest, read once at open
    s.record(failed(4), {})
    text = results(["k2-0", "k3-0", "k4-0"])
    assert text[0] == "prompt,row,status,images,seeds,error"
    assert text[1] == "p2,2,ok,images/000002-00-12.png,12,"
    assert text[2].startswith("p3,3,failed,,,HTTP 500")
    assert text[3].startswith(",4,failed,,,HTTP 500")
    s.open()
    s.record(ok(4), {})
    assert results(["k2-0", "k3-0", "k4-0"])[3] == ",4,ok,images/000004-00-14.png,14,"
    s.open()
    assert results(["k2-0", "k3-0", None])[3] == ",4,not run,,,", "no key: not this run's row"


def test_one_run_per_folder_and_a_killed_run_frees_it(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.open()
    assert folder_in_use(tmp_path)
    with pytest.raises(ConfigError, match="another batchgen run"):
        store(tmp_path).open()
    first.close()
    assert not folder_in_use(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from batchgen.outputs.store import OutputStore;"
            "s = OutputStore(Path(sys.argv[1]), 'j', '{row}', Path('.')); s.open();"
            "print('open', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "open\n"
    assert folder_in_use(tmp_path)
    holder.kill()
    holder.communicate()
    second = store(tmp_path)
    second.open()  # the kernel dropped the dead run's lock
    second.close()


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_store import ok, store

out = Path(sys.argv[1])
s = store(out)
s.open()
s.record(ok(2), {})
size = (out / "manifest.jsonl").stat().st_size
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal: a disk that is full
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
try:
    s.record(ok(3), {"prompt": "x" * 400})
except OSError as error:
    print("failed:", error.errno, flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
s.record(ok(4), {})
s.close()
"""


def test_a_full_disk_leaves_no_half_line_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(out), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("failed: 27"), done.stdout + done.stderr  # EFBIG
    lines = (out / MANIFEST).read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["row"] for line in lines] == [2, 4]
    assert store(out).open().done == {"k2-0", "k4-0"}
