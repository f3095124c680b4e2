"""Stage an output folder next to OUT and move it into place only when it is complete.

A crash, Ctrl-C or full disk must never leave something at OUT that looks like a finished model.
The export writes into a hidden sibling `.OUT.tmp-XXXX` (same file system, so the final rename
is atomic) that is removed on any failure; an existing OUT is replaced only with `--force`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from converter.errors import ConvertError

STAGING_MARK = ".tmp-"


def check_output_location(out_dir: Path, input_dir: Path, force: bool) -> None:
    """Refuse an OUT inside the input, equal to it, or non-empty without --force, before any work."""
    out_abs = Path(os.path.abspath(out_dir))
    in_abs = input_dir.resolve()
    if out_abs.resolve() == in_abs or out_abs.resolve().is_relative_to(in_abs):
        raise ConvertError("output folder lies inside the input model folder; choose a folder elsewhere", out_dir)
    if out_abs.exists() and not out_abs.is_dir():
        raise ConvertError("output path exists and is not a folder", out_dir)
    if out_abs.is_dir() and any(out_abs.iterdir()) and not force:
        raise ConvertError("output folder exists and is not empty; pass --force to replace it", out_dir)
    if not out_abs.parent.is_dir():
        raise ConvertError("the folder that should contain the output does not exist", out_abs.parent)
    if not os.access(out_abs.parent, os.W_OK):
        raise ConvertError("cannot write here (permission denied)", out_abs.parent)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def relax_permissions(folder: Path) -> None:
    """Give a folder made by mkdtemp, and the files in it, the modes a plain mkdir/open would have."""
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def stale_staging_dirs(out_dir: Path) -> list[Path]:
    """Staging folders an earlier, killed run left beside OUT."""
    parent = Path(os.path.abspath(out_dir)).parent
    return sorted(parent.glob(f".{out_dir.name}{STAGING_MARK}*"))


class StagedOutput:
    """Context manager: yields a fresh staging folder; on success it becomes OUT, on failure it vanishes."""

    def __init__(self, out_dir: Path, force: bool = False) -> None:
        self.out_dir = Path(os.path.abspath(out_dir))
        self.force = force
        self.path: Path | None = None

    def __enter__(self) -> Path:
        for stale in stale_staging_dirs(self.out_dir):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}{STAGING_MARK}", dir=self.out_dir.parent))
            self.path.chmod(0o777 & ~current_umask())
        except OSError as exc:
            raise ConvertError(f"cannot create a staging folder here: {exc.strerror}", self.out_dir.parent) from exc
        return self.path

    def _commit(self, staged: Path) -> None:
        _fsync_tree(staged)
        if self.out_dir.exists():
            if any(self.out_dir.iterdir()) and not self.force:
                raise ConvertError("output folder appeared during the export and is not empty; pass --force",
                                   self.out_dir)
            old = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}{STAGING_MARK}old-", dir=self.out_dir.parent))
            os.replace(self.out_dir, old / "previous")
            os.replace(staged, self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, self.out_dir)
        _fsync(self.out_dir.parent)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        staged = self.path
        if staged is None:
            return
        if exc_type is not None:
            shutil.rmtree(staged, ignore_errors=True)
            return
        try:
            self._commit(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise


def _fsync_tree(folder: Path) -> None:
    """Make every staged file durable before the rename that makes the output visible."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _fsync(path: Path) -> None:
    """fsync one file or folder (a folder's entry list is made durable the same way)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
