"""Runtime speed of pruned against dense models: llama.cpp and onnxruntime, side by side in one run.

For each model (SmolLM2-135M, Gemma-3-270M, a Qwen2.5-0.5B-shaped random model) the dense model
and plans removing 20%, 35% and 50% of the parameters are exported by compact-convert itself
(tools/bench_runtime_build.py; cached under --work, so a rerun only measures). Each run is a
fresh process (tools/bench_runtime_child.py); runs are interleaved (dense, p20, p35, p50, dense,
...) so slow drift in the machine's load hits every variant alike, and the median of --repeats
runs is reported.

- llama.cpp (llama_cpp binding, --threads threads): prompt processing tokens/s over a
  --prompt-token prompt in one batch, decode tokens/s over --new greedy tokens, f16 and q8_0.
- onnxruntime (CPU, --threads intra-op threads): per-token decode latency with the KV cache after
  a --onnx-prompt-token prefill, fp32 and int4.

Numbers are on two clocks, wall and the run's own CPU time (--clock picks which the table uses;
cpu by default with --threads 1, where it is what a dedicated core would take whatever the load; see
tools/bench_runtime_child.py). `--jobs N` runs N measurements at once, in the same interleaved
order; only sensible with --clock cpu. Prints a markdown table with speed-ups against the dense model of
the same run, writes
bench_runtime.json (every run's numbers) and bench_runtime.png to --out. `--breakdown
smollm2:0.35` also times, in llama.cpp f16, that plan's vocabulary cut alone and its FFN cut
alone, to show where the decode time goes.

    python -m tools.bench_runtime [--models smollm2,gemma3,qwen05] [--ratios 0.2,0.35,0.5]
        [--formats gguf-f16,gguf-q8_0,onnx-fp32,onnx-int4] [--repeats 3] [--work DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.bench_runtime_build import FORMATS, MODELS, ROOT, artefact, file_bytes, model_file, variant
from tools.bench_runtime_report import chart, markdown_table, summarise, targets
from tools.bench_runtime_split import breakdown_variants


def measure(runtime: str, path: Path, args: argparse.Namespace) -> dict[str, float]:
    prompt, new = (args.prompt, args.new) if runtime == "llama" else (args.onnx_prompt, args.onnx_new)
    cmd = [sys.executable, "-m", "tools.bench_runtime_child", runtime, str(path), "--prompt", str(prompt),
           "--new", str(new), "--threads", str(args.threads)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench_runtime", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,gemma3,qwen05", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--ratios", default="0.2,0.35,0.5", help="parameter fractions to remove (dense is always run)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)}")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    p.add_argument("--prompt", type=int, default=512, help="llama.cpp prompt tokens")
    p.add_argument("--onnx-prompt", type=int, default=128, help="onnxruntime prefill tokens")
    p.add_argument("--new", type=int, default=64, help="llama.cpp greedy tokens generated per run")
    p.add_argument("--onnx-new", type=int, default=64, help="onnxruntime greedy tokens generated per run")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp / onnxruntime threads per run")
    p.add_argument("--clock", choices=["cpu", "wall"],
                   help="which timing the table uses (default: cpu with --threads 1, else wall)")
    p.add_argument("--jobs", type=int, default=1, help="measurements running at once (default 1)")
    p.add_argument("--breakdown", action="append", default=[], metavar="MODEL:RATIO",
                   help="also time that plan's vocabulary-only and FFN-only cuts (llama.cpp f16)")
    p.add_argument("--skip", action="append", default=[], metavar="MODEL:FORMAT",
                   help="leave out one model/format combination")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-runtime",
                   help="artefact cache (reruns reuse it)")
    p.add_argument("--out", type=Path, help="where the JSON and PNG go (default: --work)")
    p.add_argument("--build-only", action="store_true", help="build the artefacts and stop")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="only merge earlier runs' bench_runtime.json files (disjoint model/format sets) into one "
                   "report")
    args = p.parse_args(argv)
    args.clock_given = args.clock is not None
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    return args


def write_report(runs: list[dict], clock: str, out_dir: Path, meta: dict) -> None:
    rows = summarise(runs, clock)
    table = markdown_table(rows)
    print("\n" + table)
    for line in targets(rows):
        print(line)
    (out_dir / "bench_runtime.json").write_text(json.dumps({**meta, "rows": rows, "runs": runs}, indent=1))
    (out_dir / "bench_runtime.md").write_text(table + "\n\n" + "\n".join(targets(rows)) + "\n")
    png = chart(rows, out_dir / "bench_runtime.png")
    print(f"wrote {out_dir / 'bench_runtime.json'}, {out_dir / 'bench_runtime.md'} and {png}")


def merge(paths: list[Path], clock: str | None, out_dir: Path) -> int:
    """One report over earlier runs; the clock defaults to the one the first run used."""
    parts = [json.loads(p.read_text()) for p in paths]
    clock = clock or parts[0]["settings"]["clock"]
    runs = [run for part in parts for run in part["runs"]]
    meta = {"merged": [{k: part[k] for k in ("started", "ended", "settings", "command")} for part in parts]}
    write_report(runs, clock, out_dir, meta)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        out = args.out or Path(".")
        out.mkdir(parents=True, exist_ok=True)
        return merge(args.merge, args.clock if args.clock_given else None, out)
    models = args.models.split(",")
    ratios = [0.0, *(float(r) for r in args.ratios.split(","))]
    formats = args.formats.split(",")
    for name in models:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise SystemExit(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    out_dir = args.out or args.work
    out_dir.mkdir(parents=True, exist_ok=True)
    started = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "load": load()}
    print(f"start {started['time']}, load average {started['load']}", flush=True)

    jobs: list[tuple[dict, Path]] = []  # (row key, artefact folder), in run order within one repeat
    for name in models:
        spec = MODELS[name]
        print(f"building {spec.label} under {args.work / name}", flush=True)
        src = spec.folder(args.work)
        variants = [variant(spec, src, args.work, r) for r in ratios]
        extra = [b for b in args.breakdown if b.split(":")[0] == name]
        for fmt in formats:
            if f"{name}:{fmt}" in args.skip:
                continue
            rows = [(v, artefact(src, v, args.work, fmt), "") for v in variants]
            if fmt == "gguf-f16":
                for b in extra:
                    ratio = float(b.split(":")[1])
                    for kind, v in breakdown_variants(src, args.work, next(x for x in variants if x.ratio == ratio)):
                        rows.append((v, artefact(src, v, args.work, fmt), kind))
            for v, folder, kind in rows:
                key = {"model": name, "label": spec.label, "ratio": v.ratio, "cut": kind or "both", "format": fmt,
                       "vocab": v.vocab, "ffn": v.ffn, "params": v.params, "dense_params": v.dense_params,
                       "file_bytes": file_bytes(folder)}
                jobs.append((key, folder))
                print(f"  {fmt:9s} ratio {v.ratio:4.2f} {kind or 'both':10s} vocab {v.vocab:6d} ffn {v.ffn:5d} "
                      f"params {v.params / 1e6:6.1f}M  file {key['file_bytes'] / 1e6:7.1f} MB", flush=True)
    if args.build_only:
        return 0

    def one(rep: int, key: dict, folder: Path) -> dict:
        runtime = "llama" if key["format"].startswith("gguf") else "onnx"
        result = measure(runtime, model_file(folder) if runtime == "llama" else folder, args)
        print(f"  rep {rep} {key['model']:8s} {key['format']:9s} {key['ratio']:4.2f} {key['cut']:10s} "
              f"pp {result['pp_tok_s']:7.1f} / cpu {result['pp_tok_s_cpu']:7.1f} tok/s  decode "
              f"{result['decode_tok_s']:6.1f} / cpu {result['decode_tok_s_cpu']:6.1f} tok/s  "
              f"RSS {result['peak_rss'] / 1e6:5.0f} MB", flush=True)
        return {**key, "repeat": rep, **result}

    order = [(rep, key, folder) for rep in range(args.repeats) for key, folder in jobs]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda job: one(*job), order))
    ended = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "load": load()}
    print(f"end {ended['time']}, load average {ended['load']}", flush=True)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "merge"}
    write_report(runs, args.clock, out_dir,
                 {"started": started, "ended": ended, "settings": settings, "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
