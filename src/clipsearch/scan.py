"""Walk a photo folder and list the image files in it; nothing here decodes a pixel."""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from clipsearch.errors import PhotoRootError
from clipsearch.images import SUPPORTED_EXTENSIONS
from clipsearch.video import VIDEO_EXTENSIONS

# What a scan lists by default: the photo formats this installation reads, and videos.
INDEXED_EXTENSIONS: frozenset[str] = SUPPORTED_EXTENSIONS | VIDEO_EXTENSIONS

__all__ = ["FileRecord", "ScanResult", "scan"]

logger = logging.getLogger(__name__)

NOT_UTF8_FILE = "file name is not valid UTF-8; rename the file"
NOT_UTF8_FOLDER = "folder name is not valid UTF-8; rename the folder"
BROKEN_LINK = "broken symbolic link"


@dataclass(frozen=True)
class FileRecord:
    """One image file: its absolute path (symlinks not resolved), size and mtime."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    """The files found, sorted by path, the `(path, reason)` of what was skipped, and the
    folders under the root that are mount points (on another device than their parent)."""

    files: list[FileRecord] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)


def scan(
    root: str | os.PathLike[str],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    extensions: Iterable[str] = INDEXED_EXTENSIONS,
    include_hidden: bool = False,
    follow_symlinks: bool = True,
) -> ScanResult:
    """Recursively list the files under `root` whose extension is in `extensions`.

    Extensions match case-insensitively. Names starting with "." are skipped unless
    `include_hidden`. Every path in `exclude`, and everything under it, is skipped.
    Symlinked folders are followed when `follow_symlinks` (symlinked files are always
    listed, under their link path), and each real folder is visited once, so loops end;
    a file reachable without symlinks is listed under that path. Unreadable folders,
    broken links, vanished files and names that are not UTF-8 go to `errors` (such names
    appear there with the bad bytes written as backslash escapes). Raises PhotoRootError
    when `root` is missing, not a folder or unreadable.
    """
    root_path = os.path.abspath(os.fsdecode(os.fspath(root)))
    root_st = _stat_root(root_path)
    walker = _Walker(
        extensions=_normalise_extensions(extensions),
        exclude=exclude,
        include_hidden=include_hidden,
        follow_symlinks=follow_symlinks,
    )
    result = walker.run(root_path, root_st)
    logger.debug(
        "scanned %s: %d files, %d problems", root_path, len(result.files), len(result.errors)
    )
    return result


def _stat_root(root: str) -> os.stat_result:
    if not _is_utf8(root):
        raise PhotoRootError(
            f"photo folder {_printable(root)} has a path that is not valid UTF-8; rename it"
        )
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise PhotoRootError(
            f"photo folder {root} does not exist; check the path or mount the drive"
        ) from None
    except PermissionError:
        raise PhotoRootError(
            f"photo folder {root} cannot be opened (permission denied); check its permissions"
        ) from None
    except OSError as e:
        raise PhotoRootError(f"photo folder {root} cannot be opened: {e.strerror or e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise PhotoRootError(
            f"photo folder {root} is not a folder; pass the folder that holds your photos"
        )
    return st


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    exts = set()
    for ext in extensions:
        ext = ext.lower()
        exts.add(ext if ext.startswith(".") else "." + ext)
    return frozenset(exts)


def _is_utf8(name: str) -> bool:
    # Undecodable bytes in Linux names arrive as surrogate escapes.
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeError:
        return False
    return True


def _printable(path: str) -> str:
    """The path with undecodable bytes written as \\xNN, safe to print and store."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _dir_key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class _Walker:
    """The state of one scan: what was found, what failed, which folders were visited."""

    def __init__(
        self,
        *,
        extensions: frozenset[str],
        exclude: Iterable[str | os.PathLike[str]],
        include_hidden: bool,
        follow_symlinks: bool,
    ) -> None:
        self.extensions = extensions
        self.include_hidden = include_hidden
        self.follow_symlinks = follow_symlinks
        self.files: list[FileRecord] = []
        self.errors: list[tuple[str, str]] = []
        self.visited: set[tuple[int, int]] = set()
        self.mounts: list[str] = []
        self.pending_links: list[str] = []
        self.excluded_paths: set[str] = set()
        # Folders are also matched by identity, so an excluded folder stays excluded when
        # it is reached through a symlink or named by another path.
        self.excluded_dirs: set[tuple[int, int]] = set()
        for item in exclude:
            path = os.path.abspath(os.fsdecode(os.fspath(item)))
            self.excluded_paths.add(os.path.normcase(path))
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                self.excluded_dirs.add(_dir_key(st))

    def run(self, root: str, root_st: os.stat_result) -> ScanResult:
        if self._root_excluded(root, root_st):
            return ScanResult()
        self.visited.add(_dir_key(root_st))
        self._walk(root, root_st.st_dev, is_root=True)
        # Symlinked folders come last, so that anything reachable by a real path is listed
        # under it; each round's links are taken in path order for determinism.
        while self.pending_links:
            batch = sorted(self.pending_links)
            self.pending_links = []
            for link in batch:
                try:
                    st = os.stat(link)
                except OSError as e:
                    self.errors.append((link, f"cannot follow symbolic link: {e.strerror or e}"))
                    continue
                key = _dir_key(st)
                if key in self.visited or key in self.excluded_dirs:
                    continue
                self.visited.add(key)
                self._walk(link, st.st_dev)
        self.files.sort(key=lambda record: record.path)
        self.errors.sort()
        return ScanResult(files=self.files, errors=self.errors, mounts=sorted(self.mounts))

    def _root_excluded(self, root: str, root_st: os.stat_result) -> bool:
        if _dir_key(root_st) in self.excluded_dirs:
            return True
        path = os.path.normcase(root)
        while True:
            if path in self.excluded_paths:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

    def _walk(self, top: str, device: int, *, is_root: bool = False) -> None:
        stack = [(top, device)]
        while stack:
            folder, device = stack.pop()
            subdirs: list[tuple[str, int]] = []
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        self._visit(entry, subdirs, device)
            except OSError as e:
                if is_root and folder == top:
                    raise PhotoRootError(
                        f"photo folder {folder} cannot be read: {e.strerror or e}; "
                        "check its permissions"
                    ) from e
                self.errors.append((folder, _folder_reason(e)))
            # Reverse-sorted onto the stack, so folders are walked in name order.
            stack.extend(sorted(subdirs, reverse=True))

    def _visit(self, entry: os.DirEntry[str], subdirs: list[tuple[str, int]], device: int) -> None:
        name = entry.name
        if name.startswith(".") and not self.include_hidden:
            return
        if not _is_utf8(name):
            self._report_bad_name(entry)
            return
        try:
            is_link = entry.is_symlink()
        except OSError:
            is_link = False
        if is_link:
            self._visit_link(entry)
            return
        path = entry.path
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False  # a type we cannot learn: treated as a file below
        if is_dir:
            if os.path.normcase(path) in self.excluded_paths:
                return
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                self.errors.append((path, _folder_reason(e)))
                return
            key = _dir_key(st)
            if key in self.excluded_dirs or key in self.visited:
                return
            self.visited.add(key)
            if _is_mount_point(path, st.st_dev, device):
                self.mounts.append(path)
            subdirs.append((path, st.st_dev))
            return
        if not self._wanted(name) or os.path.normcase(path) in self.excluded_paths:
            return
        try:
            if not entry.is_file(follow_symlinks=False):
                self.errors.append((path, "not a regular file"))
                return
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            self.errors.append((path, _file_reason(e)))
            return
        self.files.append(FileRecord(path, st.st_size, st.st_mtime_ns))

    def _visit_link(self, entry: os.DirEntry[str]) -> None:
        path = entry.path
        if os.path.normcase(path) in self.excluded_paths:
            return
        try:
            st = entry.stat(follow_symlinks=True)
        except FileNotFoundError:
            if self._wanted(entry.name) or not os.path.splitext(entry.name)[1]:
                # Only links that look like photos or folders; a dangling notes.txt is noise.
                self.errors.append((path, BROKEN_LINK))
            return
        except OSError as e:
            if e.errno == errno.ELOOP:
                self.errors.append((path, "symbolic link loop"))
            else:
                self.errors.append((path, f"cannot follow symbolic link: {e.strerror or e}"))
            return
        if stat.S_ISDIR(st.st_mode):
            if not self.follow_symlinks:
                return
            key = _dir_key(st)
            if key in self.visited or key in self.excluded_dirs:
                logger.debug("not following %s: its folder is already scanned or excluded", path)
                return
            self.pending_links.append(path)
            return
        if not self._wanted(entry.name):
            return
        if not stat.S_ISREG(st.st_mode):
            self.errors.append((path, "not a regular file"))
            return
        # Size and mtime are the target's, so editing the target is noticed.
        self.files.append(FileRecord(path, st.st_size, st.st_mtime_ns))

    def _report_bad_name(self, entry: os.DirEntry[str]) -> None:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            self.errors.append((_printable(entry.path), NOT_UTF8_FOLDER))
        elif self._wanted(entry.name):
            self.errors.append((_printable(entry.path), NOT_UTF8_FILE))

    def _wanted(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions


def _is_mount_point(path: str, device: int, parent_device: int) -> bool:
    """A folder on another device than the folder holding it: a drive mounted there."""
    return device != parent_device


def _folder_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied: cannot read this folder"
    if isinstance(error, FileNotFoundError):
        return "folder disappeared during the scan"
    return f"cannot read folder: {error.strerror or error}"


def _file_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file disappeared during the scan"
    if isinstance(error, PermissionError):
        return "permission denied: cannot read file information"
    return f"cannot read file information: {error.strerror or error}"
