"""Atomic outputs: nothing half-written under a final name; leftovers of killed writes are swept."""

from __future__ import annotations

import pytest

from brainrecon.io import atomic_dir, atomic_path


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_success_renames_and_sweeps_leftovers_of_killed_writes(tmp_path):
    out = tmp_path / "x.h5"
    (tmp_path / ".x.h5.abc.tmp.h5").write_text("left by a SIGKILL")
    (tmp_path / ".x.h5.def.tmp").mkdir()
    (tmp_path / ".y.h5.abc.tmp.h5").write_text("another output's temporary")
    with atomic_path(out) as tmp:
        tmp.write_text("done")
    assert out.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.h5.abc.tmp.h5", "x.h5"]


def test_atomic_dir(tmp_path):
    out = tmp_path / "png"
    with atomic_dir(out) as tmp:
        (tmp / "a.png").write_text("a")
    assert (out / "a.png").read_text() == "a"
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "b.png").write_text("b")
            raise ValueError
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png"]
