"""Killed, interrupted, disk-full and repeated GGUF and ONNX exports through the real CLI.

The input is a synthetic Llama-shaped bf16 checkpoint (random bytes, ~125 MB: 4 layers, hidden
1024, FFN 4096) with a real trained byte-level tokenizer, and the plan drops a quarter of the
tokens and FFN channels, so every export also rewrites the tokenizer. Per format, one undisturbed
reference run measures how long the export writes; then runs killed (SIGKILL) or interrupted
(Ctrl-C) at random points of that write window must leave no OUT, or one equal to the reference,
and no staging folder after Ctrl-C; a plain rerun into the same OUT must succeed with no clean-up
and write exactly the reference's bytes (a second process with another hash seed, so this is
also the determinism check). A full disk (RLIMIT_FSIZE) is one line, exit 2 and nothing
written. The input's bytes and mtimes never change. An ONNX run spends ~20 s CPU tracing
whatever the model's size, so ONNX gets one kill per signal and the victims run two at a time.
"""
from __future__ import annotations

import json
import random
import shlex
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from gguf import GGUFReader

from tests.support.cli_process import cli_command, contents, digest, interrupt, limit_file_size, run_timed, staging_dirs
from tests.support.reference_prune import random_plan
from tests.support.synthetic_llama import write_synthetic
from tests.support.scratch import ModuleTmp

LAYERS, HIDDEN, FFN, VOCAB = 4, 1024, 4096, 2000
KEPT_TOKENS, KEPT_CHANNELS = 1500, 3072
ATTEMPTS = {"gguf": 2, "onnx": 1}  # kills per signal
TIMEOUT_S = 600
TRIES = 3  # kills per job until one lands before the final rename


@dataclass(frozen=True)
class Model:
    src: Path
    plan: Path


@dataclass(frozen=True)
class Reference:
    fmt: str
    files: dict[str, str]
    write_window_s: float

    def command(self, model: Model, out: Path, *extra: str) -> list[str]:
        return cli_command(model.src, out, model.plan, "--format", self.fmt, *extra)


@pytest.fixture(scope="module")
def model(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Model:
    root = module_tmp.mktemp("gguf-onnx")
    src = root / "in model é"
    write_synthetic(src, LAYERS, shard_bytes=100 << 20, hidden=HIDDEN, ffn=FFN, vocab=VOCAB)
    config = json.loads((src / "config.json").read_text())
    config.update(max_position_embeddings=2048, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    (src / "config.json").write_text(json.dumps(config))
    for f in byte_level_tokenizer_dir.iterdir():
        shutil.copyfile(f, src / f.name)
    plan = random_plan(VOCAB, FFN, LAYERS, KEPT_TOKENS, KEPT_CHANNELS, seed=3)
    return Model(src, plan.save(root / "plan.json"))


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def reference(request: pytest.FixtureRequest, model: Model, module_tmp: ModuleTmp) -> Reference:
    fmt = request.param
    out = module_tmp.mktemp(f"{fmt}-reference") / "reference"
    run = run_timed(cli_command(model.src, out, model.plan, "--format", fmt), out, TIMEOUT_S)
    assert run.returncode == 0 and run.write_window_s is not None, run.stderr[-500:]
    files = contents(out)
    assert any(name.endswith((".gguf", ".onnx.data")) for name in files), files
    return Reference(fmt, files, run.write_window_s)


def _kill_and_rerun(reference: Reference, model: Model, out: Path, sig: signal.Signals, delay_s: float) -> str:
    """One kill into `out`, then (if it left no OUT) a rerun; 'mid-export' or 'after the rename'."""
    victim = interrupt(reference.command(model, out), out, sig, delay_s, TIMEOUT_S)
    if out.exists():  # the signal came after the final rename: the output must then be whole
        assert contents(out) == reference.files, victim.stderr[-300:]
        return "after the rename"
    if sig == signal.SIGKILL:
        assert victim.returncode == -signal.SIGKILL, victim.stderr[-300:]
    else:
        assert victim.returncode in (130, -signal.SIGINT), victim.stderr[-300:]
        assert victim.stderr.strip().splitlines()[-1:] == [
            "compact-convert: interrupted; the staging folder was removed"], victim.stderr[-300:]
        assert not [p for p in staging_dirs(out.parent) if p.name.startswith(f".{out.name}.")], \
            "staging folder left behind after Ctrl-C"
    rerun = subprocess.run(reference.command(model, out), capture_output=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr.decode()[-300:]
    assert contents(out) == reference.files, "the rerun after a kill wrote other bytes than the reference run"
    return "mid-export"


def _kill_until_mid_export(reference: Reference, model: Model, out: Path, sig: signal.Signals,
                           delay_s: float) -> tuple[float, str]:
    """A busy machine can make a run faster than the reference: halve the delay until a signal lands mid-export."""
    for attempt in range(TRIES):
        landed = _kill_and_rerun(reference, model, out.with_name(f"{out.name} try {attempt}"), sig, delay_s)
        if landed == "mid-export":
            break
        delay_s /= 2
    return delay_s, landed


def test_killed_export_reruns_to_the_reference_bytes(reference: Reference, model: Model, tmp_path: Path) -> None:
    before = digest(model.src)
    rng = random.Random(reference.fmt)
    jobs = [(tmp_path / f"out {sig.name} {attempt}", sig, reference.write_window_s * rng.uniform(0.05, 0.7))
            for sig in (signal.SIGKILL, signal.SIGINT) for attempt in range(ATTEMPTS[reference.fmt])]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _kill_until_mid_export(reference, model, *job), jobs))
    print(f"\n[{reference.fmt} kills] write window {reference.write_window_s:.2f} s; "
          + ", ".join(f"{sig.name} at {delay:.2f} s: {where}" for (_, sig, _), (delay, where) in zip(jobs, results)))
    assert all(where == "mid-export" for _, where in results), "a signal never landed while the export was writing"
    assert not staging_dirs(tmp_path)
    assert digest(model.src) == before


def test_disk_full_is_one_clear_line_and_nothing_written(reference: Reference, model: Model, tmp_path: Path) -> None:
    before = digest(model.src)
    out = tmp_path / "out"
    proc = subprocess.run(reference.command(model, out), capture_output=True, timeout=TIMEOUT_S,
                          preexec_fn=limit_file_size(50 << 20))
    lines = proc.stderr.decode().strip().splitlines()
    errors = [line for line in lines if line.startswith("compact-convert: error:")]
    assert proc.returncode == 2 and len(errors) == 1, lines[-5:]
    assert "writing the output failed" in errors[0] and "nothing was written" in errors[0], errors
    assert errors == lines[-1:], "the error must be the last line, after any library warnings"
    assert not out.exists() and not staging_dirs(tmp_path)
    assert digest(model.src) == before


@pytest.mark.parametrize("reference", ["gguf"], indirect=True)  # ONNX: the kill test's reruns check it
def test_gguf_is_the_same_wherever_and_however_it_is_written(reference: Reference, model: Model,
                                                             tmp_path: Path) -> None:
    """The GGUF records its command line: OUT's name and presentation flags must not change a byte."""
    out = tmp_path / "elsewhere ü"
    out.mkdir()
    proc = subprocess.run(reference.command(model, out, "--force", "--progress"), capture_output=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    assert contents(out) == reference.files
    recorded = GGUFReader(str(next(out.glob("*.gguf")))).fields["general.compact_convert.command_line"].contents()
    assert f"{shlex.quote(str(model.src))} OUT --plan" in recorded
    assert "--force" not in recorded and "progress" not in recorded
