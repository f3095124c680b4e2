"""Build (and cache) the artefacts tools/bench_runtime.py times: scores, plans, GGUF and ONNX files.

Everything is made with the product's own command line in child processes, as a user would:
each real model is scored once (`compact-convert score`), each target ratio becomes a plan
(`compact-convert plan --scores S --vocab-size V --intermediate-size F`), and every plan, the
identity plan for the dense model included, is exported by the same exporter, so dense and
pruned files differ only in their shapes. The sizes follow one fixed rule for every model: keep
the same fraction of vocabulary rows and of FFN channels, as large as the parameter budget
allows (`proportional_sizes`). The product's own `--target-ratio` auto-split would instead pick
the split by held-out bits per byte, which costs a forward pass per candidate; on a shared
2-core machine that took over 9 minutes per candidate, and runtime speed depends only on the
shapes, so a fixed, documented split keeps the benchmark affordable and the models comparable.
The synthetic Qwen2.5-0.5B-shaped model has random weights: it is scored with `--counts-only`
(token counts for the vocabulary, real tokenizer rules) and its channels are drawn with
`--method random`. Outputs are written atomically by the product, so an existing output folder
is complete and is reused.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converter.io.gguf_files import model_ggufs

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / ".fixtures"
FORMATS = {"gguf-f16": ("gguf", "f16"), "gguf-q8_0": ("gguf", "q8_0"),
           "onnx-fp32": ("onnx", "fp32"), "onnx-int4": ("onnx", "int4")}
CALIB_TOKENS = 8192
HELDOUT_TOKENS = 2048


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: where its HF folder comes from and whether its weights are real."""

    key: str
    label: str
    folder: Callable[[Path], Path]
    real: bool


def _smollm2(work: Path) -> Path:
    from tools.smollm2_hf import cached_smollm2_hf

    return cached_smollm2_hf(FIXTURES)


def _gemma3(work: Path) -> Path:
    from tools.gemma3_hf import cached_gemma3_hf

    return cached_gemma3_hf(FIXTURES)


def _qwen(work: Path) -> Path:
    from tools.synthetic_qwen import cached_synthetic_qwen

    return cached_synthetic_qwen(work)


MODELS = {
    "smollm2": ModelSpec("smollm2", "SmolLM2-135M", _smollm2, True),
    "gemma3": ModelSpec("gemma3", "Gemma-3-270M", _gemma3, True),
    "qwen05": ModelSpec("qwen05", "Qwen2.5-0.5B-shaped (random)", _qwen, False),
}


@dataclass(frozen=True)
class Variant:
    """One model at one ratio (0 = dense): its plan, shapes and parameter count."""

    model: str
    ratio: float
    plan: Path
    vocab: int
    ffn: int
    params: int
    dense_params: int
    name: str


def ratio_label(ratio: float) -> str:
    return "dense" if ratio == 0 else f"p{round(ratio * 100)}"


def _cli(*args: str, log: Path) -> None:
    """One compact-convert command in a child process; its output goes to `log`, failures raise."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "converter.cli", *args]
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed with status {done.returncode}; see {log}")
    print(f"    [{time.perf_counter() - start:6.1f} s] compact-convert {' '.join(args[:1])} ... "
          f"{' '.join(a for a in args if a.startswith('--') and a not in ('--no-progress', '--force'))}", flush=True)


def scores_for(spec: ModelSpec, src: Path, folder: Path) -> Path:
    path = folder / "scores.safetensors"
    if not path.is_file():
        extra = ["--calib-tokens", str(CALIB_TOKENS), "--heldout-tokens", str(HELDOUT_TOKENS)] if spec.real \
            else ["--counts-only"]
        _cli("score", str(src), "-o", str(path), "--no-progress", *extra, log=folder / "build.log")
    return path


def proportional_sizes(src: Path, ratio: float) -> tuple[int, int]:
    """(vocab target, FFN size) keeping the same fraction of tokens and channels, within the budget."""
    from converter.source import open_source
    from converter.score.budget import budget_for, param_model

    model = param_model(open_source(src))
    budget = budget_for(model, ratio)
    keep = (budget - model.fixed) / (model.per_token * model.vocab + model.per_channel * model.ffn)
    vocab = math.floor(keep * model.vocab)
    return vocab, model.ffn_for(vocab, budget, 32)


def plan_for(spec: ModelSpec, src: Path, folder: Path, ratio: float) -> Path:
    path = folder / f"plan-{ratio_label(ratio)}.json"
    if path.is_file():
        return path
    if ratio == 0:
        from converter.source import open_source
        from converter.plan import PrunePlan

        source = open_source(src)
        return PrunePlan.identity(source.spec, source.checkpoint.fingerprint()).save(path)
    scores = scores_for(spec, src, folder)
    vocab, ffn = proportional_sizes(src, ratio)
    method = ["--method", "compact" if spec.real else "random"]
    _cli("plan", str(src), "--scores", str(scores), "--vocab-size", str(vocab), "--intermediate-size", str(ffn),
         *method, "-o", str(path), log=folder / "build.log")
    return path


def variant(spec: ModelSpec, src: Path, work: Path, ratio: float) -> Variant:
    from converter.source import open_source
    from converter.score.budget import param_model

    folder = work / spec.key
    folder.mkdir(parents=True, exist_ok=True)
    path = plan_for(spec, src, folder, ratio)
    plan = json.loads(path.read_text(encoding="utf-8"))
    vocab, ffn = len(plan["kept_token_ids"]), len(plan["kept_ffn_channels"][0])
    model = param_model(open_source(src))
    return Variant(spec.key, ratio, path, vocab, ffn, model.params(vocab, ffn), model.total, ratio_label(ratio))


def artefact(src: Path, v: Variant, work: Path, fmt: str) -> Path:
    """The exported folder for `v` in `fmt` (a FORMATS key), exported on first use."""
    out = work / v.model / v.name / fmt
    if not out.is_dir():
        kind, outtype = FORMATS[fmt]
        out.parent.mkdir(parents=True, exist_ok=True)
        _cli(str(src), str(out), "--format", kind, "--plan", str(v.plan), "--outtype", outtype, "--no-progress",
             log=work / v.model / "build.log")
    return out


def model_file(folder: Path) -> Path:
    """The file a runtime loads: the .gguf, or model.onnx."""
    gguf = model_ggufs(folder)
    return gguf[0] if gguf else folder / "model.onnx"


def file_bytes(folder: Path) -> int:
    """What a user ships: the .gguf, or model.onnx + model.onnx.data."""
    gguf = model_ggufs(folder)
    if gguf:
        return gguf[0].stat().st_size
    return sum((folder / n).stat().st_size for n in ("model.onnx", "model.onnx.data") if (folder / n).is_file())
