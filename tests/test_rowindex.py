"""The per-row index: the same answers in memory and on disk; files removed; the store on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.outputs import rowindex
from batchgen.outputs.rowindex import RowIndex, digest_int
from batchgen.outputs.store import OutputStore, peek_state
from batchgen.records import Generation, Result, Task

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.mark.parametrize("spill", [0, 3, 10_000])
def test_same_answers_before_and_after_the_move_to_disk(tmp_path: Path, spill: int) -> None:
    index = RowIndex(tmp_path / "sub" / "index.sqlite", spill=spill)
    twins = [index.next_twin(digest_int(h)) for h in ["ff" * 8, "00" * 8, "ff" * 8, "ff" * 8]]
    assert twins == [0, 0, 1, 2]
    index.put_past([("a-0", "failed", 0), ("b-0", "ok", 10), ("a-0", "ok", 20)])
    assert index.past("a-0") == ("ok", 20) and index.past("c-0") is None
    assert sorted(index.past_keys()) == ["a-0", "b-0"] and index.past_count() == 2
    index.put_outcomes([("b-0", "failed", "", "", "OOM"), ("c-0", "ok", "images/c.png", "7", "")])
    index.put_outcomes([("b-0", "ok", "images/b.png", "5", "")])
    assert index.outcome("b-0") == ("ok", "images/b.png", "5", "")
    assert index.outcome("c-0") == ("ok", "images/c.png", "7", "") and index.outcome("a-0") is None
    index.take_all(["images/1.png"])
    assert not index.take("images/1.png") and index.take("images/2.png")
    assert not index.take("images/2.png")
    assert index.on_disk == (spill < 10_000)
    assert (tmp_path / "sub" / "index.sqlite").exists() == index.on_disk
    index.close()
    assert not (tmp_path / "sub" / "index.sqlite").exists()


def test_many_keys_page_through_and_the_temp_file_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rowindex, "COMMIT_EVERY", 7)
    index = RowIndex(spill=10)
    index.put_past([(f"k{i:05d}-0", "ok", i) for i in range(2500)])
    assert index.on_disk and index.past_count() == 2500
    assert list(index.past_keys()) == [f"k{i:05d}-0" for i in range(2500)]
    path = index._path
    assert path is not None and path.exists()
    del index
    assert not path.exists(), "collected: the temporary file is removed"


def test_a_stale_index_file_is_never_read(tmp_path: Path) -> None:
    stale = tmp_path / "index.sqlite"
    stale.write_bytes(b"left by a killed run")
    index = RowIndex(stale, spill=0)
    index.put_past([("a-0", "ok", 0)])
    assert list(index.past_keys()) == ["a-0"]
    index.close()
    assert not stale.exists()


def _result(row: int) -> Result:
    task = Task(row, f"k{row}-0", "txt2img", {"prompt": f"p{row}"}, None)
    generation = Generation((PNG,), (), (row,), "m", "abc123", None, "v1.10.1", {})
    return Result(task, "ok", "sim://x", 1, None, generation, 0.0, 0.1)


def test_the_store_resumes_the_same_through_an_index_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rowindex, "SPILL", 0)
    store = OutputStore(tmp_path, "job", "same-name", tmp_path)
    store.open()
    lines = store.record_many([(_result(2), {}), (_result(3), {})])
    assert [line.images for line in lines] == [
        ("images/same-name.png",),
        ("images/same-name~1.png",),
    ]
    assert (tmp_path / ".batchgen" / "index.sqlite").exists()
    store.close()
    assert not (tmp_path / ".batchgen").exists(), "the index goes with the run"
    assert peek_state(tmp_path).done == {"k2-0", "k3-0"}
    again = OutputStore(tmp_path, "job", "same-name", tmp_path)
    state = again.open()
    assert state.rows["k3-0"].status == "ok" and state.rows.get("k4-0") is None
    assert again._opened().outcome("k2-0") == ("ok", "images/same-name.png", "2", "")
    assert again.record(_result(4), {}).images == ("images/same-name~2.png",)
    again.close()
