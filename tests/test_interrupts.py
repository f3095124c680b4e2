"""Interrupted and failing exports: kills, Ctrl-C, a full disk; untouched inputs; determinism.

The export runs as a real subprocess of the CLI on a ~300 MB synthetic checkpoint (random bytes,
Llama-shaped), so signals land while tensors are being written.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from converter.plan import PrunePlan
from exporters.staging import current_umask
from tests.support.cli_process import cli_command, digest, limit_file_size, staging_dirs
from tests.support.synthetic_llama import write_synthetic
from tests.support.scratch import ModuleTmp

LAYERS, HIDDEN, FFN, VOCAB = 6, 1024, 4096, 32000


@pytest.fixture(scope="module")
def medium(module_tmp: ModuleTmp) -> tuple[Path, Path]:
    root = module_tmp.mktemp("medium")
    src = root / "in model é"
    write_synthetic(src, LAYERS, shard_bytes=100 << 20, hidden=HIDDEN, ffn=FFN, vocab=VOCAB)
    rng = np.random.default_rng(0)
    plan = PrunePlan(tuple(range(VOCAB)), tuple(tuple(sorted(rng.choice(FFN, 3072, replace=False).tolist()))
                                                 for _ in range(LAYERS)))
    return src, plan.save(root / "plan.json")


def _looks_complete(out: Path) -> bool:
    index = out / "model.safetensors.index.json"
    if not index.exists():
        return (out / "model.safetensors").exists() and (out / "prune_plan.json").exists()
    names = set(json.loads(index.read_text())["weight_map"].values())
    return all((out / n).exists() for n in names) and (out / "prune_plan.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_export_never_leaves_a_complete_looking_output(medium: tuple[Path, Path], tmp_path: Path,
                                                              sig: signal.Signals) -> None:
    src, plan = medium
    before = digest(src)
    start = time.perf_counter()
    subprocess.run(cli_command(src, tmp_path / "timing", plan, "--max-shard-size", "50MB"), check=True,
                   capture_output=True)
    duration = time.perf_counter() - start
    rng = random.Random(int(sig))
    for attempt in range(3):
        out = tmp_path / f"out {attempt}"
        proc = subprocess.Popen(cli_command(src, out, plan, "--max-shard-size", "50MB"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        time.sleep(duration * rng.uniform(0.2, 0.9))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if out.exists():  # the signal came after the final rename: the output must then be whole
            assert _looks_complete(out), err.decode()[-300:]
            continue
        if sig != signal.SIGKILL:
            assert proc.returncode in (130, -sig, -signal.SIGINT), err.decode()[-300:]
            assert not staging_dirs(tmp_path), "staging folder left behind after a catchable signal"
        rerun = subprocess.run(cli_command(src, out, plan, "--max-shard-size", "50MB"), capture_output=True,
                               timeout=300)
        assert rerun.returncode == 0, rerun.stderr.decode()[-300:]
        assert _looks_complete(out) and not staging_dirs(tmp_path)
    assert digest(src) == before


def test_disk_full_is_one_clear_line_and_nothing_written(medium: tuple[Path, Path], tmp_path: Path) -> None:
    src, plan = medium
    out = tmp_path / "out"
    proc = subprocess.run(cli_command(src, out, plan), capture_output=True, timeout=300,
                          preexec_fn=limit_file_size(50 << 20))
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "writing the output failed" in lines[0], lines
    assert not out.exists() and not staging_dirs(tmp_path)


def test_same_input_gives_byte_identical_output(medium: tuple[Path, Path], tmp_path: Path) -> None:
    src, plan = medium
    for name in ("a", "b"):
        subprocess.run(cli_command(src, tmp_path / name, plan), check=True, capture_output=True, timeout=300)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    # weights, config, generation config, plan (the synthetic model has no tokenizer), the report and its plot
    assert len(a) == 7


def test_read_only_input_folder(medium: tuple[Path, Path], tmp_path: Path) -> None:
    src, plan = medium
    modes = {p: p.stat().st_mode for p in [src, *src.iterdir()]}
    try:
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        subprocess.run(cli_command(src, tmp_path / "out ü", plan), check=True, capture_output=True, timeout=300)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert _looks_complete(tmp_path / "out ü")
    assert (tmp_path / "out ü").stat().st_mode & 0o777 == 0o777 & ~current_umask()
