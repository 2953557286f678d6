"""Atomic outputs: whole or absent, the previous version kept when writing fails, no temporary names left behind."""

from __future__ import annotations

import json

import pytest

from data.files import atomic_folder, atomic_path, atomic_write_json, atomic_write_text, copy_folder, temporary_sibling


class _Crash(Exception):
    pass


def test_a_temporary_name_is_hidden_beside_the_output_and_keeps_its_suffix(tmp_path):
    tmp = temporary_sibling(tmp_path / "plot.png")
    assert tmp.parent == tmp_path and tmp.name.startswith(".plot.tmp-") and tmp.suffix == ".png"


def test_text_and_json_are_written_whole_with_parents_and_nothing_else(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    atomic_write_json(tmp_path / "a" / "c.json", {"path": tmp_path}, default=str)
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "a" / "c.json").read_text()) == {"path": str(tmp_path)}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt", "c.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")
    with pytest.raises(_Crash), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise _Crash
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "best"
    with atomic_folder(folder) as tmp:
        (tmp / "old.txt").write_text("1")
    with pytest.raises(_Crash), atomic_folder(folder) as tmp:
        (tmp / "new.txt").write_text("2")
        raise _Crash
    assert [p.name for p in folder.iterdir()] == ["old.txt"]  # the failed version left no trace
    with atomic_folder(folder) as tmp:
        (tmp / "new.txt").write_text("2")
    assert [p.name for p in folder.iterdir()] == ["new.txt"]  # not merged with the old one
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_copy_folder_replaces_the_target_with_the_source(tmp_path):
    source, target = tmp_path / "round-1" / "best", tmp_path / "best"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "model.bin").write_bytes(b"\x00\x01")
    target.mkdir()
    (target / "stale.json").write_text("{}")
    copy_folder(source, target)
    assert [p.relative_to(target).as_posix() for p in sorted(target.rglob("*"))] == ["sub", "sub/model.bin"]
    assert (target / "sub" / "model.bin").read_bytes() == b"\x00\x01"
