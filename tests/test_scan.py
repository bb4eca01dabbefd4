"""scan.scan: recursion, filters, excludes, symlinks, unreadable folders and bad names."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clipsearch import scan as scan_module
from clipsearch.errors import PhotoRootError
from clipsearch.scan import FileRecord, ScanResult, scan


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def listed(result: ScanResult) -> list[str]:
    return [record.path for record in result.files]


def test_nested_folders_with_size_and_mtime(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.jpg", b"12345")
    b = touch(tmp_path / "2020" / "summer" / "b.png", b"1")
    c = touch(tmp_path / "2020" / "c.webp", b"12")
    touch(tmp_path / "2020" / "notes.txt")
    touch(tmp_path / "README")

    result = scan(tmp_path)

    assert listed(result) == sorted(str(p) for p in (a, b, c))
    assert result.errors == []
    record = next(r for r in result.files if r.path == str(a))
    assert record == FileRecord(str(a), 5, a.stat().st_mtime_ns)


def test_paths_are_absolute_and_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("z.jpg", "m/b.jpg", "a.jpg", "m/a.jpg"):
        touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    result = scan(".")
    assert all(os.path.isabs(p) for p in listed(result))
    assert listed(result) == sorted(listed(result))
    assert listed(result) == [str(tmp_path / n) for n in ("a.jpg", "m/a.jpg", "m/b.jpg", "z.jpg")]


def test_extensions_are_case_insensitive(tmp_path: Path) -> None:
    for name in ("A.JPG", "b.Jpeg", "c.PNG", "d.TiF", "e.txt"):
        touch(tmp_path / name)
    assert [Path(p).name for p in listed(scan(tmp_path))] == ["A.JPG", "b.Jpeg", "c.PNG", "d.TiF"]


def test_custom_extensions(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.PNG")
    assert [Path(p).name for p in listed(scan(tmp_path, extensions=["png"]))] == ["b.PNG"]
    assert [Path(p).name for p in listed(scan(tmp_path, extensions={".PNG"}))] == ["b.PNG"]


def test_hidden_files_and_folders_are_skipped_unless_asked(tmp_path: Path) -> None:
    visible = touch(tmp_path / "a.jpg")
    hidden_file = touch(tmp_path / ".secret.jpg")
    hidden_dir_file = touch(tmp_path / ".thumbnails" / "t.jpg")
    assert listed(scan(tmp_path)) == [str(visible)]
    assert set(listed(scan(tmp_path, include_hidden=True))) == {
        str(visible), str(hidden_file), str(hidden_dir_file)
    }


def test_hidden_root_is_still_scanned(tmp_path: Path) -> None:
    photo = touch(tmp_path / ".photos" / "a.jpg")
    assert listed(scan(tmp_path / ".photos")) == [str(photo)]


def test_excluded_folder_and_everything_under_it(tmp_path: Path) -> None:
    keep = touch(tmp_path / "keep.jpg")
    touch(tmp_path / "library" / "thumbs" / "x.jpg")
    touch(tmp_path / "library" / "y.png")
    skipped_file = touch(tmp_path / "skip.jpg")
    result = scan(tmp_path, exclude=[tmp_path / "library", str(skipped_file)])
    assert listed(result) == [str(keep)]


def test_exclude_given_as_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keep = touch(tmp_path / "keep.jpg")
    touch(tmp_path / "lib" / "x.jpg")
    monkeypatch.chdir(tmp_path)
    assert listed(scan(tmp_path, exclude=["lib"])) == [str(keep)]


def test_excluded_folder_reached_through_a_symlink_stays_excluded(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    keep = touch(root / "keep.jpg")
    touch(root / "library" / "x.jpg")
    os.symlink(root / "library", root / "zz_link")
    assert listed(scan(root, exclude=[root / "library"])) == [str(keep)]


def test_root_inside_an_excluded_folder_gives_nothing(tmp_path: Path) -> None:
    touch(tmp_path / "lib" / "sub" / "x.jpg")
    assert scan(tmp_path / "lib" / "sub", exclude=[tmp_path / "lib"]).files == []


def test_symlink_loop_terminates_and_lists_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    a = touch(root / "album" / "a.jpg")
    b = touch(root / "b.jpg")
    os.symlink(root, root / "album" / "back_to_root")  # link to an ancestor
    os.symlink(root / "album", root / "album" / "self")  # link to itself
    os.symlink(root / "album", root / "0_alias")  # sorts before the real folder

    start = time.perf_counter()
    result = scan(root)
    assert time.perf_counter() - start < 2

    # Each file once, under its real path even though "0_alias" sorts first.
    assert listed(result) == [str(a), str(b)]
    assert result.errors == []


def test_symlinked_folder_outside_the_root_is_followed(tmp_path: Path) -> None:
    outside = touch(tmp_path / "elsewhere" / "c.jpg")
    root = tmp_path / "photos"
    touch(root / "a.jpg")
    os.symlink(outside.parent, root / "linked")
    os.symlink(outside.parent, root / "linked_again")
    result = scan(root)
    assert str(root / "linked" / "c.jpg") in listed(result)
    assert str(root / "linked_again" / "c.jpg") not in listed(result)
    assert len(result.files) == 2

    not_followed = scan(root, follow_symlinks=False)
    assert listed(not_followed) == [str(root / "a.jpg")]


def test_nested_symlinks_in_linked_folders_are_followed(tmp_path: Path) -> None:
    deep = touch(tmp_path / "deep" / "d.jpg")
    mid = tmp_path / "mid"
    touch(mid / "m.jpg")
    os.symlink(deep.parent, mid / "to_deep")
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink(mid, root / "to_mid")
    assert listed(scan(root)) == [
        str(root / "to_mid" / "m.jpg"), str(root / "to_mid" / "to_deep" / "d.jpg")
    ]


def test_symlinked_file_is_listed_under_its_link_path(tmp_path: Path) -> None:
    target = touch(tmp_path / "store" / "real.jpg", b"abc")
    root = tmp_path / "photos"
    root.mkdir()
    link = root / "link.jpg"
    os.symlink(target, link)
    (record,) = scan(root).files
    assert record.path == str(link)
    assert record.size == 3
    assert record.mtime_ns == target.stat().st_mtime_ns


def test_broken_symlink_is_reported(tmp_path: Path) -> None:
    ok = touch(tmp_path / "ok.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    os.symlink(tmp_path / "unmounted", tmp_path / "Old Drive")
    os.symlink(tmp_path / "nowhere.txt", tmp_path / "notes.txt")  # not a photo: noise
    result = scan(tmp_path)
    assert listed(result) == [str(ok)]
    assert result.errors == [
        (str(tmp_path / "Old Drive"), "broken symbolic link"),
        (str(tmp_path / "dangling.jpg"), "broken symbolic link"),
    ]


def test_self_referencing_symlink_is_reported(tmp_path: Path) -> None:
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    result = scan(tmp_path)
    assert result.files == []
    assert result.errors == [(str(tmp_path / "loop.jpg"), "symbolic link loop")]


def test_unreadable_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = touch(tmp_path / "ok.jpg")
    locked = tmp_path / "locked"
    touch(locked / "secret.jpg")
    real_scandir = os.scandir

    def fake_scandir(path: str) -> object:
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(scan_module.os, "scandir", fake_scandir)
    result = scan(tmp_path)
    assert listed(result) == [str(ok)]
    assert result.errors == [(str(locked), "permission denied: cannot read this folder")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_by_permissions(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    touch(locked / "secret.jpg")
    locked.chmod(0)
    try:
        result = scan(tmp_path)
    finally:
        locked.chmod(0o755)
    assert result.errors == [(str(locked), "permission denied: cannot read this folder")]


def test_file_vanishing_between_listing_and_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = touch(tmp_path / "keep.jpg")
    gone = touch(tmp_path / "gone.jpg")
    real_scandir = os.scandir

    class ListThenDelete:
        """Lists the folder fully, then deletes a listed file before anyone stats it."""

        def __init__(self, path: str) -> None:
            with real_scandir(path) as entries:
                self.entries = list(entries)
            gone.unlink(missing_ok=True)

        def __enter__(self) -> object:
            return iter(self.entries)

        def __exit__(self, *args: object) -> None:
            pass

    monkeypatch.setattr(scan_module.os, "scandir", ListThenDelete)
    result = scan(tmp_path)
    assert listed(result) == [str(keep)]
    assert result.errors == [(str(gone), "file disappeared during the scan")]


def test_missing_root_raises_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(PhotoRootError) as info:
        scan(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_root_that_is_a_file_raises(tmp_path: Path) -> None:
    photo = touch(tmp_path / "a.jpg")
    with pytest.raises(PhotoRootError, match="is not a folder"):
        scan(photo)


def test_unreadable_root_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> object:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(scan_module.os, "scandir", refuse)
    with pytest.raises(PhotoRootError, match="cannot be read"):
        scan(tmp_path)


def test_non_utf8_file_name_is_reported_not_listed(tmp_path: Path) -> None:
    ok = touch(tmp_path / "ok.jpg")
    bad = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    os.close(os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644))
    os.close(os.open(os.path.join(os.fsencode(tmp_path), b"x\xff.txt"), os.O_CREAT, 0o644))
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"dir\xfe"))

    result = scan(tmp_path)

    assert listed(result) == [str(ok)]
    assert result.errors == [
        (str(tmp_path / "caf\\xe9.jpg"), "file name is not valid UTF-8; rename the file"),
        (str(tmp_path / "dir\\xfe"), "folder name is not valid UTF-8; rename the folder"),
    ]
    for path, _ in result.errors:
        path.encode("utf-8")  # printable and storable


def test_non_regular_file_with_photo_extension_is_reported(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    result = scan(tmp_path)
    assert result.files == []
    assert result.errors == [(str(tmp_path / "pipe.jpg"), "not a regular file")]


def test_many_files_quickly(tmp_path: Path) -> None:
    for d in range(20):
        folder = tmp_path / f"d{d:02}"
        folder.mkdir()
        for i in range(250):
            (folder / f"{i}.jpg").touch()
            (folder / f"{i}.xmp").touch()
    start = time.perf_counter()
    result = scan(tmp_path)
    elapsed = time.perf_counter() - start
    assert len(result.files) == 5000
    assert elapsed < 2.0
