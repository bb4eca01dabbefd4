"""Hostile and odd files, end to end through `Library.index`: each is skipped with its reason
or indexed correctly, and nothing else in the run is lost.

Loader-level cases (modes, EXIF, caps, truncation) are in test_images.py and folder-walk
cases in test_scan.py; here they meet the indexer, the catalog and the index together.
Decompression bombs are loaded in a fresh process that reports its peak memory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import COLOURS, NAMES, FakeEncoder, write_colour_photos
from hostile import BOMBS, png, png_deflate_bomb
from PIL import Image

import clipsearch.pipeline.plan
import clipsearch.scan
from clipsearch import Library, PhotoRootError
from clipsearch.errors import ImageLoadError
from clipsearch.images import load_image

HOSTILE = Path(__file__).with_name("hostile.py")


def _consistent(lib: Library) -> None:
    assert sorted(lib.vector_index.ids().tolist()) == lib.catalog.ok_ids().tolist()


def _colour_of(lib: Library, path: str) -> str:
    """The colour axis the stored vector of `path` points along (the fake encoder's meaning)."""
    row = lib.catalog.find_path(path)
    assert row is not None and row.status == "ok", (path, row)
    vector = lib.vectors([row.id])[1][0]
    return NAMES[int(np.argmax(vector[: len(NAMES)]))]


# -- a folder of everything at once ----------------------------------------------------------------
def _odd_but_valid(folder: Path) -> dict[str, str]:
    """Files in unusual modes and containers, each of one fake-encoder colour; returns path -> colour."""
    out: dict[str, str] = {}

    def add(name: str, colour: str, image: Image.Image, **save: object) -> None:
        path = folder / name
        image.save(path, **save)
        out[str(path)] = colour

    add("cmyk.jpg", "red", Image.new("RGB", (40, 30), COLOURS["red"]).convert("CMYK"))
    add("cmyk.tif", "green", Image.new("RGB", (40, 30), COLOURS["green"]).convert("CMYK"))
    add("grey16.png", "white", Image.new("I;16", (40, 30), 65535))
    add("grey16.tif", "black", Image.new("I;16", (40, 30), 300))
    transparent = Image.new("P", (40, 30), 0)
    transparent.putpalette([*COLOURS["black"], *COLOURS["blue"]] + [0] * 762)
    add("palette_transparent.png", "white", transparent, transparency=0)  # all transparent: on white
    frames = [Image.new("RGB", (40, 30), COLOURS[c]) for c in ("blue", "red", "green")]
    add("animated.gif", "blue", frames[0], save_all=True, append_images=frames[1:], duration=40, loop=0)
    add("animated.webp", "orange", Image.new("RGB", (40, 30), COLOURS["orange"]), save_all=True,
        append_images=[frames[1]], duration=40, lossless=True)
    add("alpha.webp", "purple", Image.new("RGBA", (40, 30), (*COLOURS["purple"], 255)), lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: stored 60×40, shown 40×60
    add("rotated.jpg", "yellow", Image.new("RGB", (60, 40), COLOURS["yellow"]), exif=exif)
    add("really_a_png.jpg", "green", Image.new("RGB", (40, 30), COLOURS["green"]), format="PNG")
    return out


def _hostile(folder: Path) -> dict[str, str]:
    """Files that must be skipped; returns path -> a piece of the reason the report must give."""
    out: dict[str, str] = {}

    def write(name: str, data: bytes, reason: str) -> None:
        (folder / name).write_bytes(data)
        out[str(folder / name)] = reason

    good = folder / "red.jpg"
    write("zero.jpg", b"", "file is empty")
    write("truncated.jpg", good.read_bytes()[: good.stat().st_size // 2], "truncated or corrupt")
    corrupt = bytearray((folder / "blue.jpg").read_bytes())
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 100] = b"\xff" * 100  # in the entropy-coded data
    write("corrupt.jpg", bytes(corrupt), "corrupt")
    write("notes.jpg", b"shopping list: milk, eggs\n" * 20, "not an image file")
    write("page.png", b"<!doctype html><html><body>404</body></html>", "not an image file")
    Image.new("RGB", (8, 8)).save(folder / "sneaky.jpg", format="PCX")  # Pillow reads PCX; we do not
    out[str(folder / "sneaky.jpg")] = "not an image file"
    write("bomb_header.png", png(100_000, 100_000), "over the 150 MP limit")
    write("bomb_deflate.png", png_deflate_bomb(13_000), "over the 150 MP limit")
    write("strip.png", png(1, 200_000), "longer than 100:1")
    os.mkfifo(folder / "pipe.jpg")
    out[str(folder / "pipe.jpg")] = "not a regular file"
    os.symlink(folder / "deleted.jpg", folder / "dangling.jpg")
    out[str(folder / "dangling.jpg")] = "broken symbolic link"
    os.symlink("self.jpg", folder / "self.jpg")
    out[str(folder / "self.jpg")] = "symbolic link loop"
    bad_name = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    shutil.copyfile(good, bad_name)
    out[str(folder / "caf\\xe9.jpg")] = "not valid UTF-8"
    return out


@pytest.mark.slow
def test_a_folder_of_hostile_and_odd_files_costs_only_those_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    good = write_colour_photos(photos, ["red", "green", "blue"])
    good.update(write_colour_photos(photos / "deep" / "er", ["yellow"]))
    os.symlink("..", photos / "deep" / "er" / "up")  # a folder loop
    odd = _odd_but_valid(photos)
    hostile = _hostile(photos)

    encoder = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        report = lib.index(photos)
        skipped = {s.path: s.reason for s in report.skipped}
        assert set(skipped) == set(hostile), set(skipped) ^ set(hostile)
        for path, reason in hostile.items():
            assert reason in skipped[path], (path, skipped[path])

        indexed = {p for p, r in lib.catalog.images_under(str(photos)).items() if r.status == "ok"}
        assert indexed == set(good.values()) | set(odd)  # each once, however many ways it is reachable
        assert report.added == len(indexed) and encoder.images_encoded == len(indexed)
        for name, path in good.items():
            assert _colour_of(lib, path) == name
        for path, colour in odd.items():
            assert _colour_of(lib, path) == colour, path
        rotated = lib.catalog.find_path(str(photos / "rotated.jpg"))
        assert (rotated.width, rotated.height) == (40, 60)
        _consistent(lib)

        # Failures are remembered, not retried, and still not fatal on the next run.
        again = lib.index(photos)
        assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, len(indexed))
        decode_failures = [p for p, r in hostile.items() if os.path.isfile(p) and not os.path.islink(p)
                           and "UTF-8" not in r]
        assert again.previously_failed == len(decode_failures)
        assert encoder.images_encoded == len(indexed)


def test_heic_photos_are_indexed_when_pillow_heif_is_installed(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red"])
    heif = pillow_heif.from_pillow(Image.new("RGB", (64, 48), COLOURS["blue"]))
    heif.save(photos / "phone.heic", quality=90)
    (photos / "broken.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(photos)
        assert report.added == 2
        assert [s.path for s in report.skipped] == [str(photos / "broken.heic")]
        assert _colour_of(lib, str(photos / "phone.heic")) == "blue"
        row = lib.catalog.find_path(str(photos / "phone.heic"))
        assert (row.width, row.height) == (64, 48)


# -- bombs: bounded memory and time --------------------------------------------------------------
@pytest.mark.slow
def test_decompression_bombs_are_refused_from_the_header_in_bounded_memory_and_time() -> None:
    result = subprocess.run([sys.executable, str(HOSTILE), *BOMBS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["case"] for r in rows] == list(BOMBS)
    for row in rows:
        assert row["reason"] != "loaded", row
        assert row["bytes"] < 25_000, row  # tiny files...
        assert row["seconds"] < 1.0, row  # ...refused at once...
        assert row["peak_growth_mb"] < 50, row  # ...without allocating the pixels they claim
    reasons = {r["case"]: r["reason"] for r in rows}
    assert "over the 150 MP limit" in reasons["png-deflate"]
    assert "longer than 100:1" in reasons["strip"]


# -- the file system moving under the indexer ------------------------------------------------------
def test_an_unreadable_sub_folder_keeps_its_photos(library: Library, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sub = str(tmp_path / "photos" / "sub")
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if os.fspath(path) == sub:  # root reads any folder, so permissions are simulated
            raise PermissionError(13, "Permission denied", sub)
        return real_scandir(path, *args)

    monkeypatch.setattr(clipsearch.scan.os, "scandir", scandir)
    report = library.index(tmp_path / "photos")
    assert (report.removed, report.unchanged) == (0, 6)
    assert [(s.path, s.reason) for s in report.skipped] == [(sub, "permission denied: cannot read this folder")]
    assert library.catalog.count() == 8 and library.vector_index.ntotal == 8


def _scan_then(monkeypatch: pytest.MonkeyPatch, action) -> None:
    """Make the indexer's scan run `action` right after listing the files, as another program might."""
    real_scan = clipsearch.pipeline.plan.scan

    def scan(*args, **kwargs):
        found = real_scan(*args, **kwargs)
        action()
        return found

    monkeypatch.setattr(clipsearch.pipeline.plan, "scan", scan)


def test_a_file_that_vanishes_between_scan_and_decode_is_skipped(tmp_path: Path, colour_photos: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _scan_then(monkeypatch, lambda: os.unlink(colour_photos["red"]))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(tmp_path / "photos")
        assert report.added == 7
        assert [(s.path, s.reason, s.retry) for s in report.skipped] == [
            (colour_photos["red"], "file does not exist", True)]
        assert lib.catalog.find_path(colour_photos["red"]) is None  # not the file's fault: nothing remembered
        _consistent(lib)
        monkeypatch.undo()
        again = lib.index(tmp_path / "photos")
        assert (again.added, again.removed, again.unchanged, again.skipped) == (0, 0, 7, [])
        assert lib.catalog.find_path(colour_photos["red"]) is None


def test_a_file_changed_between_scan_and_decode_records_the_version_decoded(
        tmp_path: Path, colour_photos: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = colour_photos["red"]
    original = Path(path).read_bytes()
    first = os.stat(path)

    def edit() -> None:  # a photo editor saves a blue version after the scan listed the red one
        Image.new("RGB", (64, 48), COLOURS["blue"]).save(path, format="JPEG")
        os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns + 7_000_000_000))

    _scan_then(monkeypatch, edit)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(tmp_path / "photos")
        row = lib.catalog.find_path(path)
        now = os.stat(path)
        assert (row.size, row.mtime_ns) == (now.st_size, now.st_mtime_ns)  # not the scanned red version's
        assert _colour_of(lib, path) == "blue"
        monkeypatch.undo()

        # A backup restores the red original with its own mtime (rsync -t, cp -p): that must be noticed.
        Path(path).write_bytes(original)
        os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
        report = lib.index(tmp_path / "photos")
        assert report.updated == 1
        assert _colour_of(lib, path) == "red"
        _consistent(lib)


def test_a_file_changed_while_being_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.images

    path = tmp_path / "busy.png"
    Image.new("RGB", (32, 32), COLOURS["red"]).save(path)
    real_decode = clipsearch.images._decode

    def decode_while_a_camera_app_writes(fp, *args):
        image = real_decode(fp, *args)
        with open(path, "ab") as fh:
            fh.write(b"\0" * 100)
        return image

    monkeypatch.setattr(clipsearch.images, "_decode", decode_while_a_camera_app_writes)
    with pytest.raises(ImageLoadError, match="changed while it was being read"):
        load_image(path)


def test_a_file_swapped_for_a_fifo_after_the_check_cannot_block_the_loader(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import clipsearch.images

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(path)
    real_check = clipsearch.images._check_file

    def check_then_swap(*args) -> None:
        real_check(*args)
        path.unlink()
        os.mkfifo(path)  # opening a FIFO for reading blocks until a writer comes, unless O_NONBLOCK

    monkeypatch.setattr(clipsearch.images, "_check_file", check_then_swap)
    outcome: list[BaseException] = []
    worker = threading.Thread(target=lambda: outcome.append(pytest.raises(ImageLoadError, load_image, path).value),
                              daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader so the thread ends, then fail
        with open(path, "wb"):
            pass
        pytest.fail("load_image blocked on a FIFO")
    assert outcome and outcome[0].reason == "not a regular file"


# -- a photo root that is gone, empty or unreadable ------------------------------------------------
def _break_root(photos: Path, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "deleted":
        shutil.rmtree(photos)
    elif how == "emptied mount point":
        shutil.rmtree(photos)
        photos.mkdir()
    elif how == "only sub-folder gone":
        for entry in photos.iterdir():
            if entry.is_file():
                entry.unlink()
        shutil.rmtree(photos / "sub")  # the root itself is still there, and empty
    elif how == "dangling link to a drive":
        shutil.move(photos, tmp_path / "drive")
        photos.symlink_to(tmp_path / "drive")
        shutil.rmtree(tmp_path / "drive")
    elif how == "a file now":
        shutil.rmtree(photos)
        photos.write_text("not a folder")
    elif how == "unreadable":
        real_scandir = os.scandir

        def scandir(path=".", *args):
            if os.fspath(path) == str(photos):
                raise PermissionError(13, "Permission denied", str(photos))
            return real_scandir(path, *args)

        monkeypatch.setattr(clipsearch.scan.os, "scandir", scandir)


@pytest.mark.parametrize("how, message", [
    ("deleted", "does not exist"),
    ("emptied mount point", "is the drive unmounted"),
    ("only sub-folder gone", "is the drive unmounted"),
    ("dangling link to a drive", "does not exist"),
    ("a file now", "is not a folder"),
    ("unreadable", "cannot be read"),
])
def test_a_photo_root_that_is_gone_or_empty_removes_nothing(library: Library, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, how: str,
                                                            message: str) -> None:
    photos = tmp_path / "photos"
    if how == "only sub-folder gone":
        for entry in list(photos.iterdir()):
            if entry.is_file():
                entry.unlink()
        library.index(photos)  # now everything indexed lives in photos/sub
    before = library.catalog.count()
    _break_root(photos, tmp_path, how, monkeypatch)
    with pytest.raises(PhotoRootError, match=message) as err:
        library.index(photos)
    assert str(photos) in str(err.value)
    assert library.catalog.count() == before and library.vector_index.ntotal == before
    library.close()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.catalog.count() == before
        _consistent(lib)


def _pretend_mounted(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """As if a drive were mounted at each of `folders` (no mounting in tests): scan sees another device there."""
    mounted = {str(f) for f in folders}
    monkeypatch.setattr(clipsearch.scan, "_is_mount_point", lambda path, device, parent: path in mounted)


def test_a_drive_mounted_inside_the_root_and_then_unmounted_removes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red", "green"])
    drive = photos / "usb-drive"
    on_drive = write_colour_photos(drive, ["blue", "yellow", "purple"])
    _pretend_mounted(monkeypatch, drive)
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    assert lib.index(photos).added == 5
    # Unplugged: the mount point is an empty folder on the root's own drive.
    shutil.rmtree(drive)
    drive.mkdir()
    _pretend_mounted(monkeypatch)
    for _ in range(2):  # and it stays protected run after run, until it is back
        report = lib.index(photos)
        assert report.removed == 0 and lib.catalog.count() == 5 and lib.vector_index.ntotal == 5
        [skipped] = [s for s in report.skipped if s.path == str(drive)]
        assert "not mounted" in skipped.reason and "3 indexed photos were kept" in skipped.reason
        assert "--allow-empty" in skipped.reason
    assert lib.search("blue", k=1)[0].path == on_drive["blue"]
    # Back, with one photo deleted meanwhile: that one goes, the others are unchanged.
    write_colour_photos(drive, ["blue", "yellow"])
    for name in ("blue", "yellow"):  # the same files as before
        os.utime(drive / f"{name}.jpg", ns=(lib.catalog.find_path(on_drive[name]).mtime_ns,) * 2)
    _pretend_mounted(monkeypatch, drive)
    report = lib.index(photos)
    assert (report.removed, report.added, report.skipped) == (1, 0, [])
    # Unplugged for good: --allow-empty removes its photos.
    shutil.rmtree(drive)
    _pretend_mounted(monkeypatch)
    assert lib.index(photos).removed == 0
    report = lib.index(photos, allow_empty=True)
    assert report.removed == 2 and lib.catalog.count() == 2 and report.skipped == []
    assert lib.index(photos).skipped == []  # forgotten: nothing more to protect
    _consistent(lib)
    lib.close()


def test_a_mounted_drive_whose_photos_were_deleted_is_synced_as_usual(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red"])
    drive = photos / "nas"
    write_colour_photos(drive, ["blue", "green"])
    _pretend_mounted(monkeypatch, drive)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.index(photos).added == 3
        for f in drive.iterdir():
            f.unlink()
        report = lib.index(photos)  # still mounted, really emptied
        assert report.removed == 2 and report.skipped == []
