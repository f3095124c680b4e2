"""Peak memory of an ONNX export against the size of the checkpoint: is quantization streamed?

The fused exporter converts and quantizes one tensor at a time as the weights stream into
model.onnx.data, so its peak anonymous memory should be the interpreter's fixed cost (Python,
torch, onnx, transformers' config classes) plus a few tensors (at most two jobs: the one being
written and the one read ahead), not the model. This exports Qwen2.5-shaped checkpoints of random
bf16 weights (tools.synthetic_qwen: 0.5B, 1 GB; 1.5B, 3.1 GB) with an identity plan (every tensor
at full size, the worst case) in each `--outtypes` and samples the export process's anonymous and
file-backed memory (tools.bench_rewrite.MemorySampler). Beside each row: the largest job's arrays
(the tied embedding/LM head: bf16 rows in, quantized blocks or float matrix out) and the bare interpreter with
the exporter's imports, the floor no export can go below. `--builder` adds onnxruntime-genai's
builder on the same checkpoint (int4), which loads the whole model into torch first.

    python -m tools.bench_onnx_memory [--work /tmp/bench-onnx-memory] [--shapes 0.5b 1.5b]
        [--outtypes int4 fp32] [--builder]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.bench_onnx_builder import identity_plan
from tools.bench_rewrite import MemorySampler

IMPORTS = ("import converter.cli, exporters.onnx, exporters.onnx.fused, onnx, torch, transformers; "
           "from transformers import Qwen2Config")


def measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run cmd; seconds and peak anonymous / file-backed MiB of its process tree."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        proc.wait()
    sampler.done = True
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"seconds": time.perf_counter() - start, "anon": sampler.anon / 2**20, "file": sampler.file / 2**20}


def checkpoint(work: Path, shape: str) -> Path:
    folder = work / f"qwen2.5-{shape}-shaped"
    if not (folder / "model.safetensors").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "tools.synthetic_qwen", str(folder), "--shape", shape], check=True)
    return folder


def largest_job_mib(src: Path, outtype: str) -> float:
    """The tied embedding/LM head job: its rows as read (bf16), plus its output (quantized blocks with
    fp32 scales, or the float matrix)."""
    config = json.loads((src / "config.json").read_text())
    values = config["vocab_size"] * config["hidden_size"]
    out_bytes = {"int4": 0.5 + 4 / 32, "int8": 1 + 4 / 32, "fp16": 2, "fp32": 4}[outtype]
    return values * (2 + out_bytes) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-onnx-memory"))
    p.add_argument("--shapes", nargs="+", default=["0.5b", "1.5b"], choices=["0.5b", "1.5b"])
    p.add_argument("--outtypes", nargs="+", default=["int4", "fp32"])
    p.add_argument("--builder", action="store_true", help="also run onnxruntime-genai's builder (int4)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    floor = measured([sys.executable, "-c", IMPORTS], args.work / "imports.log")
    print(f"interpreter with the exporter's imports: {floor['anon']:.0f} MiB anonymous", flush=True)
    rows = []
    for shape in args.shapes:
        src = checkpoint(args.work, shape)
        size = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2**30
        plan = identity_plan(src, args.work / f"identity-{shape}.json")
        runs = [(f"ours {outtype}", outtype, [sys.executable, "-m", "converter.cli", "export", str(src), "--format",
                                              "onnx", "--plan", str(plan), "--outtype", outtype, "--no-progress",
                                              "--no-report", "--force"]) for outtype in args.outtypes]
        if args.builder:
            runs.append(("builder int4", "int4", [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                                                  str(src), "-p", "int4", "-e", "cpu", "-c",
                                                  str(args.work / "cache"), "-o"]))
        for name, outtype, cmd in runs:
            out = args.work / f"{shape}-{name.replace(' ', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            got = measured([*cmd, str(out)], args.work / f"{shape}-{name.replace(' ', '-')}.log")
            data = sum(f.stat().st_size for f in out.glob("model.onnx*")) / 2**20
            rows.append((shape, size, name, got, data, largest_job_mib(src, outtype)))
            print(f"{shape} ({size:.2f} GiB) {name}: {got['seconds']:.0f} s, peak anonymous {got['anon']:.0f} MiB, "
                  f"file-backed {got['file']:.0f} MiB, output {data:.0f} MiB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    print("\n| checkpoint | export | seconds | peak anonymous MiB | above the imports | largest job MiB "
          "| file-backed MiB | output MiB |\n|---|---|---|---|---|---|---|---|")
    for shape, size, name, got, data, job in rows:
        print(f"| Qwen2.5-{shape} shape, {size:.2f} GiB bf16 | {name} | {got['seconds']:.0f} | {got['anon']:.0f} "
              f"| {got['anon'] - floor['anon']:.0f} | {job:.0f} | {got['file']:.0f} | {data:.0f} |")
    print(f"\nInterpreter with the exporter's imports alone: {floor['anon']:.0f} MiB anonymous.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
