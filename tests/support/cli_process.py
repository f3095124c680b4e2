"""The CLI as a real subprocess: start it, interrupt it mid-export, and read what it left behind.

The interrupt tests of every output format share these. A signal must land while files are
being written, whatever the machine's load, so `interrupt` waits until the staging folder holds
a file and then signals after a random part of the write window that a reference run measured
(`run_timed`), rather than guessing from wall-clock time since the start.
"""
from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from exporters.staging import STAGING_MARK

POLL_S = 0.005


def cli_command(src: Path, out: Path, plan: Path, *extra: str) -> list[str]:
    """`compact-convert SRC OUT --plan PLAN --no-progress EXTRA...` in this interpreter."""
    return [sys.executable, "-m", "converter.cli", str(src), str(out), "--plan", str(plan), "--no-progress", *extra]


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime_ns) of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def contents(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (what byte-identical output compares)."""
    return {name: sha for name, (sha, _) in digest(folder).items()}


def staging_dirs(parent: Path) -> list[Path]:
    """Staging folders (finished, abandoned or in progress) in `parent`."""
    return sorted(p for p in parent.iterdir() if STAGING_MARK in p.name)


def limit_file_size(limit: int) -> Callable[[], None]:
    """A preexec_fn giving the child a disk that is full after `limit` bytes per file (EFBIG, no SIGXFSZ)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@dataclass(frozen=True)
class Run:
    """How a CLI process ended, and how long it spent writing (first staged file to OUT appearing)."""

    returncode: int
    stderr: str
    write_window_s: float | None


def _staged_file_appeared(out: Path, ignore: set[Path]) -> bool:
    prefix = f".{out.name}{STAGING_MARK}"
    with os.scandir(out.parent) as entries:
        dirs = [Path(e.path) for e in entries if e.name.startswith(prefix) and e.is_dir()]
    for d in dirs:
        if d in ignore:
            continue
        try:
            with os.scandir(d) as inside:
                if any(True for _ in inside):
                    return True
        except FileNotFoundError:
            continue
    return False


def _wait_for_writing(proc: subprocess.Popen[bytes], out: Path, ignore: set[Path], timeout_s: float) -> float | None:
    """Block until a file appears in a new staging folder for `out`; its time, or None if the process ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _staged_file_appeared(out, ignore):
            return time.monotonic()
        if proc.poll() is not None:
            return None
        time.sleep(POLL_S)
    raise TimeoutError(f"no staged file for {out} after {timeout_s} s")


def run_timed(cmd: Sequence[str], out: Path, timeout_s: float = 300) -> Run:
    """Run to the end, measuring the write window (not the interpreter's exit after the final rename)."""
    ignore = set(staging_dirs(out.parent))
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks on it
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err)
        first = _wait_for_writing(proc, out, ignore, timeout_s)
        while first is not None and not out.exists() and proc.poll() is None:
            time.sleep(POLL_S)
        window = None if first is None else time.monotonic() - first
        proc.wait(timeout=timeout_s)
        return Run(proc.returncode, _read(err), window)


def interrupt(cmd: Sequence[str], out: Path, sig: signal.Signals, delay_s: float, timeout_s: float = 300) -> Run:
    """Start the CLI, send `sig` `delay_s` after its first staged file appears, and wait for it to end."""
    ignore = set(staging_dirs(out.parent))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err)
        if _wait_for_writing(proc, out, ignore, timeout_s) is not None:
            time.sleep(delay_s)
            if proc.poll() is None:
                proc.send_signal(sig)
        proc.wait(timeout=timeout_s)
        return Run(proc.returncode, _read(err), None)


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")
