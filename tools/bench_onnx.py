"""Export the pruned SmolLM2-135M to ONNX in every precision and print time, peak RSS, sizes, agreement.

The model is pruned by a random FFN plan (1536 -> 1344 channels per layer, seeded; weight
magnitude is no guide for SmolLM2: keeping the largest-norm channels wrecks it) and a vocabulary
plan (the tokens the varied test corpus and the prompt use, grown by the tokenizer's rules), and
stays coherent. Each export runs in a fresh process so its peak RSS (VmHWM, which counts the
memory-mapped source pages it read) can be set against the bare interpreter with the same imports. Agreement is measured
against the pruned HF model in float32: max |diff| / logit scale and top-1 agreement over a
prefill + 16 cached steps, and how many of 32 greedy tokens match transformers' generate.

    python -m tools.bench_onnx [--out /tmp/bench-onnx] [--outtypes fp32,fp16,int8,int4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from converter.plan import PrunePlan
from converter.source import open_source
from tests.support.smollm2_plans import PROMPT, smollm2_plan
from tools.smollm2_hf import cached_smollm2_hf

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / ".fixtures"


def peak_rss() -> int:
    """VmHWM of this process in bytes (unlike ru_maxrss, it does not inherit the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _export_child(src: str, plan: str, out: str, outtype: str) -> None:
    import time

    from converter.pipeline import export
    from exporters.options import ExportOptions

    start = time.perf_counter()
    export(open_source(Path(src)), PrunePlan.load(Path(plan)), Path(out), "onnx",
           ExportOptions(outtype=outtype, progress=False), force=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak_rss()}))


def _baseline_child() -> None:
    import transformers  # noqa: F401

    import exporters.onnx  # noqa: F401

    print(json.dumps({"peak_rss": peak_rss()}))


def _child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "tools.bench_onnx", "--child", *args], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _agreement(onnx_dir: Path, reference, prompt: list[int]) -> dict[str, float]:
    from tests.support.onnx_runner import (
        OnnxDecoder,
        genai_greedy,
        greedy,
        hf_greedy,
        leading_equal,
        reference_logits,
        teacher_forced,
    )

    rng = np.random.default_rng(0)
    continuation = rng.choice(np.array(prompt), size=16)
    ids = np.array([[*prompt, *continuation]])
    mask = np.ones_like(ids)
    decoder = OnnxDecoder(onnx_dir)
    got = teacher_forced(decoder, ids, mask, len(prompt))
    want = reference_logits(reference, ids, mask)
    theirs = hf_greedy(reference, prompt, 32)
    return {"max_rel_diff": float(np.abs(got - want).max() / np.abs(want).max()),
            "top1": float((got.argmax(-1) == want.argmax(-1)).mean()),
            "greedy_leading": leading_equal(greedy(decoder, prompt, 32), theirs),
            "genai_leading": leading_equal(genai_greedy(onnx_dir, prompt, 32), theirs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-onnx")
    p.add_argument("--outtypes", default="fp32,fp16,int8,int4")
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        _export_child(*args.child) if args.child else _baseline_child()
        return 0

    from transformers import AutoTokenizer

    from tests.support.onnx_runner import pruned_hf_model

    src = cached_smollm2_hf(FIXTURES)
    source = open_source(src)
    args.out.mkdir(parents=True, exist_ok=True)
    plan_path = smollm2_plan(source).save(args.out / "plan.json")
    reference = pruned_hf_model(src, PrunePlan.load(plan_path), args.out / "hf")
    prompt = AutoTokenizer.from_pretrained(args.out / "hf")(PROMPT)["input_ids"]
    weights = sum(f.stat().st_size for f in (args.out / "hf").glob("*.safetensors"))
    baseline = _child()["peak_rss"]
    print(f"pruned SmolLM2: vocab {reference.config.vocab_size}, ffn {reference.config.intermediate_size}; "
          f"pruned weights {weights / 1e6:.1f} MB (bf16 safetensors), fp32 {weights * 2 / 1e6:.1f} MB")
    print(f"interpreter with torch+transformers+onnx imported: peak RSS {baseline / 1e6:.0f} MB")
    for outtype in args.outtypes.split(","):
        out = args.out / outtype
        run = _child(str(src), str(plan_path), str(out), outtype)
        data = (out / "model.onnx.data").stat().st_size
        agree = _agreement(out, reference, prompt)
        print(f"{outtype:5s} export {run['seconds']:6.1f} s  peak RSS {run['peak_rss'] / 1e6:6.0f} MB  "
              f"model.onnx {(out / 'model.onnx').stat().st_size / 1e6:5.1f} MB  model.onnx.data {data / 1e6:6.1f} MB  "
              f"max|diff|/scale {agree['max_rel_diff']:.2e}  top-1 {agree['top1']:.3f}  "
              f"greedy: onnxruntime {agree['greedy_leading']}/32, onnxruntime-genai {agree['genai_leading']}/32 "
              "leading tokens equal to generate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
