"""clipsearch.atomic: the one way files are replaced (temp in the same folder, fsync, os.replace)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.atomic import atomic_path, atomic_write_text, atomic_writer, remove_stale_temp_files


def test_a_writer_that_raises_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "captions.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_writer(path, "w", newline="") as fh:
            fh.write("half a new file")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["captions.csv"]
    with atomic_writer(path, "w", durable=False) as fh:  # a cache: no fsync, still all or nothing
        fh.write("new\n")
    assert path.read_text() == "new\n"
    atomic_write_text(tmp_path / "é.json", "{}")
    assert (tmp_path / "é.json").read_text() == "{}"


def test_atomic_path_keeps_the_suffix_so_suffix_judging_writers_write_where_told(tmp_path: Path) -> None:
    target = tmp_path / "table.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npy") and tmp.exists()
        np.save(tmp, np.arange(3))  # np.save appends .npy to a name without it
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.npy"]
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.npy"]


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".index.faiss.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".index.faiss.json.def456.tmp").write_bytes(b"half")
    (tmp_path / "index.faiss").write_bytes(b"whole")
    assert remove_stale_temp_files(tmp_path / "index.faiss") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
