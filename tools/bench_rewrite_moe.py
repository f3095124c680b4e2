"""Benchmark the streamed rewrite of a mixture-of-experts checkpoint against `cp` + `sync`, in both expert layouts.

The dense benchmark (tools/bench_rewrite.py) times Llama-shaped checkpoints; an MoE checkpoint differs where
memory could grow: its experts come either as two stacked 3-D tensors per layer (transformers 5's
`mlp.experts.gate_up_proj`, hundreds of MB each) or as thousands of small 2-D tensors (released checkpoints),
and each expert is cut its own way. For a Qwen3-MoE-shaped bf16 checkpoint of about 4 GB (tools/synthetic_moe.py:
hidden 2048, 48 experts of width 768, 6 layers, the real 151936-token Qwen2.5 tokenizer) in each layout, it
runs `cp -r` + `sync`, the HF rewrite and the GGUF f16 export, interleaved round by round, each as a
subprocess of the real CLI with the checkpoint's pages evicted first, under one plan that cuts the
vocabulary (the first 32000 tokens and the specials, grown by the tokenizer's merge closure) and every
expert to 512 of its 768 channels, a different random set per expert. It prints throughput in GB/s of
source bytes, the ratio to cp paired per round, and peak anonymous memory (the rewrite with its plot
child by Pss_Anon, and the rewrite alone by RssAnon) next to the dense targets: at least 0.8x cp, and
anonymous memory under twice the largest tensor plus 300 MB. It first times the same cut on a 41 MB
checkpoint with the same tokenizer: the fixed cost of a run, and the memory any checkpoint needs before a
tensor streams. Its measuring, eviction and bytecode compilation are tools/bench_rewrite.py's own.

    python -m tools.bench_rewrite_moe [--layouts stacked per-expert] [--formats hf gguf] [--repeats 3]
        [--layers 6] [--experts 48] [--workdir DIR] [--evict data|all]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.bench_rewrite import cold_run, compile_tool, rewrite_cmd
from tools.synthetic_moe import LAYOUTS, moe_config, write_synthetic_moe

FORMATS = {"hf": [], "gguf": ["--format", "gguf", "--outtype", "f16"]}
KEEP_TOKENS, KEEP_EXPERT = 32000, 512
MIB = 2**20


def write_plan(path: Path, config: dict[str, object]) -> Path:
    """Keep the first KEEP_TOKENS tokens and the added ones; every expert keeps its own random KEEP_EXPERT channels."""
    from converter.plan import PrunePlan

    vocab, layers, experts, width = (int(config[k]) for k in  # type: ignore[call-overload]
                                     ("vocab_size", "num_hidden_layers", "num_experts", "moe_intermediate_size"))
    rng = np.random.default_rng(1)
    tokens = (*range(KEEP_TOKENS), *range(151643, min(vocab, 151665)))
    kept = tuple(tuple(tuple(sorted(rng.choice(width, KEEP_EXPERT, replace=False).tolist())) for _ in range(experts))
                 for _ in range(layers))
    return PrunePlan(tokens, (), None, {"method": "bench"}, kept_expert_channels=kept).save(path)


def sizes(config: dict[str, object]) -> dict[str, int]:
    """Bytes of the largest tensor (the embedding), of a stacked gate_up_proj and of one expert's gate+up slab."""
    hidden, vocab, experts, width = (int(config[k]) for k in  # type: ignore[call-overload]
                                     ("hidden_size", "vocab_size", "num_experts", "moe_intermediate_size"))
    slab = 2 * width * hidden * 2
    return {"largest": vocab * hidden * 2, "stack": experts * slab, "slab": slab}


@dataclass(frozen=True)
class LayoutResult:
    """One layout's medians over the rounds, keyed by "cp" and the formats (memory: formats only)."""

    layout: str
    gb: float
    shards: int
    cold: bool
    seconds: dict[str, float]
    ratio: dict[str, float]
    ratio_range: dict[str, tuple[float, float]]
    anon: dict[str, int]  # the rewrite and its plot child, by Pss_Anon
    main_anon: dict[str, int]  # the rewrite process alone, by RssAnon
    file: dict[str, int]


def fixed_cost(work: Path, formats: list[str], repeats: int, mode: str) -> dict[str, tuple[float, int, int]]:
    """Per format, the median cold wall time and the peak anonymous memory (with the plot child, and alone) of
    a run on a 1-layer, 4-expert, hidden-64 checkpoint (41 MB) with the same tokenizer and cut: start-up,
    imports, the 151936-token tokenizer's surgery, the report and fsync, which a checkpoint of any size pays
    once, and the memory the streaming adds nothing to if it is bounded."""
    from tests.support.real_tokenizers import qwen_tokenizer_dir

    config = moe_config(1, 4, hidden=64)
    src, out = work / "synthetic-moe-tiny", work / "out"
    write_synthetic_moe(src, "stacked", config, qwen_tokenizer_dir())
    plan = write_plan(work / "tiny-plan.json", config)
    runs = {f: [cold_run([*rewrite_cmd(src, out, plan), *FORMATS[f]], src, out, mode)[1] for _ in range(repeats)]
            for f in formats}
    shutil.rmtree(src)
    return {f: (statistics.median(r[0] for r in v), max(r[1] for r in v), max(r[3] for r in v))
            for f, v in runs.items()}


def bench_layout(work: Path, layout: str, config: dict[str, object], plan: Path, formats: list[str], repeats: int,
                 mode: str) -> LayoutResult:
    from tests.support.real_tokenizers import qwen_tokenizer_dir

    src = work / f"synthetic-moe-{layout}"
    total = write_synthetic_moe(src, layout, config, qwen_tokenizer_dir())
    shards = sum(1 for _ in src.glob("*.safetensors"))
    runs: dict[str, list[tuple[float, int, int, int]]] = {k: [] for k in ("cp", *formats)}
    cold = True
    try:
        for _ in range(repeats):
            cp_out = work / "cp-out"
            for label, cmd, out in (("cp", ["cp", "-r", str(src), str(cp_out)], cp_out),
                                    *((f, [*rewrite_cmd(src, work / "out", plan), *FORMATS[f]], work / "out")
                                      for f in formats)):
                dropped, result = cold_run(cmd, src, out, mode)
                cold = cold and dropped
                runs[label].append(result)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    ratios = {k: [c[0] / r[0] for c, r in zip(runs["cp"], runs[k])] for k in formats}
    seconds = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    peak = {i: {k: int(max(r[i] for r in runs[k])) for k in formats} for i in (1, 2, 3)}
    return LayoutResult(layout, total / 1e9, shards, cold, seconds,
                        {k: statistics.median(v) for k, v in ratios.items()},
                        {k: (min(v), max(v)) for k, v in ratios.items()}, peak[1], peak[3], peak[2])


def print_rows(rows: list[LayoutResult], formats: list[str], size: dict[str, int], repeats: int,
               fixed: dict[str, tuple[float, int, int]]) -> None:
    limit = (2 * size["largest"] + 300e6) / MIB
    print("| layout | size | cp+sync | " + " | ".join(f"{f} (median s, GB/s, ratio to cp, range)" for f in formats)
          + " | " + " | ".join(f"{f} peak anon MiB (alone), file MiB" for f in formats) + " |")
    print("| --- " * (3 + 2 * len(formats)) + "|")
    for r in rows:
        speed = [f"{r.seconds[f]:.1f} s, {r.gb / r.seconds[f]:.2f} GB/s, {r.ratio[f]:.2f}x "
                 f"({r.ratio_range[f][0]:.2f}-{r.ratio_range[f][1]:.2f})" for f in formats]
        memory = [f"{r.anon[f] / MIB:.0f} ({r.main_anon[f] / MIB:.0f}), {r.file[f] / MIB:.0f}" for f in formats]
        print(f"| {r.layout} | {r.gb:.2f} GB in {r.shards} shards | {r.seconds['cp']:.1f} s, "
              f"{r.gb / r.seconds['cp']:.2f} GB/s | " + " | ".join(speed) + " | " + " | ".join(memory) + " |")
    print(f"\nratio: rewrite speed over cp+sync, paired within each of {repeats} rounds (cp runs just before), median")
    print(f"targets (dense): ratio >= 0.8x; peak anonymous memory < 2 x largest tensor + 300 MB = {limit:.0f} MiB")
    print(f"largest tensor (embedding, lm_head) {size['largest'] / MIB:.0f} MiB; a stacked gate_up_proj "
          f"{size['stack'] / MIB:.0f} MiB; one expert's gate+up slab {size['slab'] / MIB:.1f} MiB")
    print("fixed cost of one run (start-up, imports, tokenizer surgery, report, fsync; a 41 MB checkpoint with the "
          "same tokenizer and cut): " + ", ".join(f"{f} {fixed[f][0]:.2f} s, peak anon {fixed[f][1] / MIB:.0f} MiB "
                                                   f"(alone {fixed[f][2] / MIB:.0f})" for f in formats))
    print("ratio less that fixed cost (an upper bound: the report overlaps the streaming), medians:")
    for r in rows:
        less = {f: f"{r.seconds['cp'] / (r.seconds[f] - fixed[f][0]):.2f}x" if r.seconds[f] > fixed[f][0] else "n/a"
                for f in formats}
        print(f"  {r.layout}: " + ", ".join(f"{f} {less[f]}" for f in formats) + " of cp")
    if not all(r.cold for r in rows):
        print("cache: could not be dropped (runs are warm)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=["hf", "gguf"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--experts", type=int, default=48)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--evict", choices=("data", "all"), default="data",
                        help="before each run evict the checkpoint's pages only (default) or drop the whole page "
                             "cache, the installed tool included (needs root)")
    args = parser.parse_args()
    if args.layers < 1 or args.experts < 1:
        parser.error("--layers and --experts must be positive")
    config = moe_config(args.layers, args.experts)
    compile_tool()
    work = Path(tempfile.mkdtemp(prefix="bench-rewrite-moe-", dir=args.workdir))
    try:
        fixed = fixed_cost(work, args.formats, args.repeats, args.evict)
        plan = write_plan(work / "plan.json", config)
        rows = [bench_layout(work, layout, config, plan, args.formats, args.repeats, args.evict)
                for layout in args.layouts]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_rows(rows, args.formats, sizes(config), args.repeats, fixed)
    print("cache: the checkpoint's pages evicted before every run (posix_fadvise DONTNEED)" if args.evict == "data"
          else "cache: the whole page cache dropped before every run")


if __name__ == "__main__":
    main()
