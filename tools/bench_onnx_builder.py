"""Our fused ONNX export against onnxruntime-genai's own model builder, on SmolLM2-135M.

Four exports per weight type, side by side: the builder on the dense model, the builder on our
pruned HF output, ours dense (an identity plan) and ours pruned (the plan of that HF output, so
both pruned graphs hold the same weights). Each export runs in its own process; its peak RSS is
that child's ru_maxrss (the parent imports nothing heavy). Each graph is then driven by
onnxruntime-genai with 2 intra-op threads: a 128-token prompt (prefill tokens/s) and 64 greedy
tokens (decode tokens/s), each run in a fresh process, runs interleaved across the exports and
the median of `--runs` taken. On a shared machine the numbers are noisy; the interleaving keeps
the comparison fair, not the absolute values. `--paired N` then also loads ours and the builder's
graph of the same weights into one process and times them in N pairs ordered A B B A (neither
graph always runs right after itself, which favours a repeat), the tighter ratio on a noisy machine.
Load order matters too: the same graph loaded twice into one process runs 3-5% slower decode and
6-7% slower prefill as the first-loaded copy (Gemma-3-270M fp32), and one process can run both
5-10% faster or slower than the next; so every process times one A B B A pair of rounds, half of
them loading ours first and half the builder's, and `--paired` first times the builder's dense
graph against itself that way as the control (a fair split reads 1.00x).
`--onnx-logits last` exports ours with `--onnx-logits last` and the builder with its matching
`prune_lm_head=true` (both return the last position's logits only; the default, `all`, is both
tools' default). `--scores S` gives our exports the scores the plan came from, so their int4 blocks
weigh each column by its calibration inputs (the one-shot command always has them). `--agreement`
reports each int4 export's top-1 agreement with the same tool's fp32 export of the same weights,
teacher-forced over held-out licence prose (the issue's "at least as high as the builder's at the
same settings").

    python -m tools.bench_onnx_builder [--src /tmp/bx/smollm2] [--pruned DIR] [--work /tmp/bench-onnx-builder]
        [--outtypes int4,fp32] [--runs 3] [--paired 60] [--agreement] [--reuse] [--onnx-logits last] [--scores S]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT_TOKENS, DECODE_TOKENS, THREADS = 128, 64, 2
# The KV buffer every graph gets (max_length): the builder's Gemma 3 graph refuses a cache shorter than
# its 512-token sliding window, so all graphs get this much room; only 192 positions are ever used.
CACHE_TOKENS = 1024


def _run_measured(cmd: list[str], log: Path) -> tuple[float, int]:
    """Run cmd; (seconds, peak RSS bytes of that child)."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def builder_child(argv: list[str]) -> None:
    """Run onnxruntime-genai's builder with Gemma 3's transformers-5 config made readable to it.

    The builder (0.18) reads Gemma 3's rope settings the transformers-4 way: `rope_parameters["rope_type"]`
    and `rope_local_base_freq`, where transformers 5 keeps one rope dict per layer type; unpatched, it
    stops with a KeyError on Gemma-3-270M. Both are filled in from the per-type dicts (same values), so
    the builder writes the graph it would for the older config. Other models pass through unchanged."""
    import runpy

    import transformers

    original = transformers.AutoConfig.from_pretrained

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        config = result[0] if isinstance(result, tuple) else result  # (config, unused kwargs) when asked
        rope = getattr(config, "rope_parameters", None) or {}
        if config.model_type == "gemma3_text" and "sliding_attention" in rope and "rope_type" not in rope:
            config.rope_parameters = {**rope["full_attention"], **rope}
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        return result

    transformers.AutoConfig.from_pretrained = from_pretrained  # type: ignore[method-assign]
    sys.argv = ["builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


def identity_plan(src: Path, out: Path) -> Path:
    """A plan that keeps every token and channel (the dense export through our exporter)."""
    code = ("import sys; from pathlib import Path; from converter.arch import load_arch; "
            "from converter.plan import PrunePlan; "
            "PrunePlan.identity(load_arch(Path(sys.argv[1]))).save(Path(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(src), str(out)], check=True)
    return out


def exports(src: Path, pruned: Path, work: Path, outtypes: list[str], last_logits: bool = False,
            scores: Path | None = None) -> dict[str, dict]:
    """Run the eight (or fewer) exports; name -> {folder, seconds, rss}. `last_logits`: ours with
    --onnx-logits last and the builder with its prune_lm_head, the same setting; `scores`: ours
    given the scores, which weigh the quantizer's columns."""
    plan = pruned / "prune_plan.json"
    dense_plan = identity_plan(src, work / "identity_plan.json")
    ours_extra = (["--onnx-logits", "last"] if last_logits else []) + (["--scores", str(scores)] if scores else [])
    builder_extra = ["--extra_options", "prune_lm_head=true"] if last_logits else []
    results: dict[str, dict] = {}
    for outtype in outtypes:
        builder = "int4" if outtype == "int4" else "fp32"
        jobs = {
            f"builder dense {outtype}": [sys.executable, "-m", "tools.bench_onnx_builder", "--builder-child", "-i",
                                         str(src), "-p", builder, "-e", "cpu", "-c", str(work / "cache"),
                                         *builder_extra, "-o"],
            f"builder pruned {outtype}": [sys.executable, "-m", "tools.bench_onnx_builder", "--builder-child", "-i",
                                          str(pruned), "-p", builder, "-e", "cpu", "-c", str(work / "cache"),
                                          *builder_extra, "-o"],
            f"ours dense {outtype}": [sys.executable, "-m", "converter.cli", "export", str(src), "--format", "onnx",
                                      "--plan", str(dense_plan), "--outtype", outtype, "--no-progress",
                                      "--no-report", "--force", *ours_extra],
            f"ours pruned {outtype}": [sys.executable, "-m", "converter.cli", "export", str(src), "--format", "onnx",
                                       "--plan", str(plan), "--outtype", outtype, "--no-progress", "--no-report",
                                       "--force", *ours_extra],
        }
        for name, cmd in jobs.items():
            folder = work / name.replace(" ", "-")
            shutil.rmtree(folder, ignore_errors=True)
            seconds, rss = _run_measured([*cmd, str(folder)], work / f"{name.replace(' ', '-')}.log")
            _set_threads(folder / "genai_config.json")
            size = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
            results[name] = {"folder": str(folder), "seconds": seconds, "rss": rss, "size": size}
            print(f"exported {name}: {seconds:.1f} s, peak RSS {rss / 2**20:.0f} MiB, {size / 2**20:.1f} MiB",
                  flush=True)
    return results


def _set_threads(genai: Path) -> None:
    config = json.loads(genai.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = THREADS
    options["inter_op_num_threads"] = 1
    genai.write_text(json.dumps(config, indent=4))


def _prompt(*folders: str) -> list[int]:
    """The same prompt ids for every graph timed together: below the smallest vocabulary among them."""
    vocab = min(json.loads((Path(f) / "genai_config.json").read_text())["model"]["vocab_size"] for f in folders)
    return [(7919 * i) % (vocab - 10) + 5 for i in range(PROMPT_TOKENS)]


def _measure(og: Any, model: Any, prompt: list[int]) -> dict[str, float]:
    """One 128-token prefill and 63 timed decode steps: {"prefill": tok/s, "decode": tok/s}."""
    params = og.GeneratorParams(model)
    total = PROMPT_TOKENS + DECODE_TOKENS
    params.set_search_options(max_length=max(total, CACHE_TOKENS), min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(prompt)
    prefill = time.perf_counter() - start
    generator.generate_next_token()  # the first token's logits came with the prefill
    start = time.perf_counter()
    for _ in range(DECODE_TOKENS - 1):
        generator.generate_next_token()
    decode = time.perf_counter() - start
    return {"prefill": PROMPT_TOKENS / prefill, "decode": (DECODE_TOKENS - 1) / decode}


def speed_child(folder: str) -> None:
    """One measurement in this process: prints {"prefill": tok/s, "decode": tok/s}."""
    import onnxruntime_genai as og

    print(json.dumps(_measure(og, og.Model(folder), _prompt(folder))))


def paired_child(first: str, second: str, rounds: int) -> None:
    """Both graphs loaded into this process in the order given, timed A B B A: prints
    {"first": [samples], "second": [samples]}."""
    import onnxruntime_genai as og

    models = {"first": og.Model(first), "second": og.Model(second)}
    prompt = _prompt(first, second)
    samples: dict[str, list[dict[str, float]]] = {"first": [], "second": []}
    for r in range(rounds):
        for name in ("first", "second") if r % 2 == 0 else ("second", "first"):
            samples[name].append(_measure(og, models[name], prompt))
    print(json.dumps(samples))


def paired_samples(ours: str, rival: str, rounds: int) -> dict[str, dict[str, float]]:
    """Medians over `rounds` A B B A pairs, two to a process (so one process's luck, such as where its
    memory lands, weighs little), the processes alternately loading ours and the rival first:
    {"ours": {"prefill", "decode"}, "rival": {...}}."""
    samples: dict[str, list[dict[str, float]]] = {"ours": [], "rival": []}
    folders = {"ours": ours, "rival": rival}
    for process in range(max(2, -(-rounds // 2))):
        order = ("ours", "rival") if process % 2 == 0 else ("rival", "ours")
        out = subprocess.run([sys.executable, "-m", "tools.bench_onnx_builder", "--paired-child",
                              folders[order[0]], folders[order[1]], "2"],
                             check=True, capture_output=True, text=True).stdout
        got = json.loads(out.strip().splitlines()[-1])
        samples[order[0]] += got["first"]
        samples[order[1]] += got["second"]
    return {name: {key: statistics.median(s[key] for s in got) for key in ("prefill", "decode")}
            for name, got in samples.items()}


def paired(results: dict[str, dict], rounds: int) -> str:
    """Ours against the builder (`paired_samples`: two rounds a process, load order alternating): on the
    same weights, and our pruned graph against the builder's dense one (the model a user gets without
    us), after the control; markdown lines."""
    outtypes = sorted({n.rsplit(" ", 1)[1] for n in results}, reverse=True)
    pairs = [(f"builder dense {outtypes[0]}", f"builder dense {outtypes[0]}")]  # the control
    for outtype in outtypes:
        pairs += [(f"ours {kind} {outtype}", f"builder {kind} {outtype}") for kind in ("dense", "pruned")]
        pairs.append((f"ours pruned {outtype}", f"builder dense {outtype}"))
    lines = []
    for name, rival in pairs:
        got = paired_samples(results[name]["folder"], results[rival]["folder"], rounds)
        ours, theirs = got["ours"], got["rival"]
        lines.append(f"- {name} vs {rival}, {rounds} A B B A pairs, two a process, load order balanced: decode "
                     f"{ours['decode']:.1f} vs {theirs['decode']:.1f} tok/s "
                     f"({ours['decode'] / theirs['decode']:.2f}x), prefill "
                     f"{ours['prefill']:.1f} vs {theirs['prefill']:.1f} "
                     f"({ours['prefill'] / theirs['prefill']:.2f}x)")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def speeds(results: dict[str, dict], runs: int) -> None:
    samples: dict[str, list[dict]] = {name: [] for name in results}
    for run in range(runs):
        for name, result in results.items():
            out = subprocess.run([sys.executable, "-m", "tools.bench_onnx_builder", "--speed-child",
                                  result["folder"]], check=True, capture_output=True, text=True).stdout
            samples[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {run + 1} {name}: {samples[name][-1]}", flush=True)
    for name, got in samples.items():
        results[name]["prefill"] = statistics.median(s["prefill"] for s in got)
        results[name]["decode"] = statistics.median(s["decode"] for s in got)


def agreement_child(folders: list[str], tokens: int) -> None:
    """Top-1 agreement of each (int4, fp32) pair of folders on held-out licence prose, teacher-forced in
    one prefill of 4 x tokens/4 (prints {"int4 folder": share}); both graphs read the same token ids."""
    import numpy as np
    from tokenizers import Tokenizer

    from tests.support.onnx_runner import OnnxDecoder, teacher_forced
    from tools.eval_quality import split_domain

    texts, _ = split_domain(24000)
    out = {}
    for int4, fp32 in zip(folders[0::2], folders[1::2]):
        tokenizer = Tokenizer.from_file(str(Path(fp32) / "tokenizer.json"))
        ids = [i for text in texts for i in tokenizer.encode(text).ids][:tokens]
        batch = np.array(ids).reshape(4, -1)
        mask = np.ones_like(batch)
        want = teacher_forced(OnnxDecoder(Path(fp32)), batch, mask, batch.shape[1]).argmax(-1)
        got = teacher_forced(OnnxDecoder(Path(int4)), batch, mask, batch.shape[1]).argmax(-1)
        out[int4] = float((got == want).mean())
    print(json.dumps(out))


def agreement(results: dict[str, dict], tokens: int = 1024) -> str:
    """int4 top-1 agreement with the same tool's fp32 export of the same weights; markdown lines."""
    pairs = [(f"{tool} {kind} int4", f"{tool} {kind} fp32") for kind in ("dense", "pruned")
             for tool in ("ours", "builder")]
    folders = [results[name]["folder"] for pair in pairs for name in pair]
    out = subprocess.run([sys.executable, "-m", "tools.bench_onnx_builder", "--agreement-child", str(tokens),
                          *folders], check=True, capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    lines = [f"- {int4}: top-1 agreement with {fp32} {got[results[int4]['folder']]:.3f} over {tokens} tokens of "
             "held-out licence prose" for int4, fp32 in pairs]
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


def table(results: dict[str, dict]) -> str:
    rows = ["| export | decode tok/s | prefill tok/s | size MiB | export s | export peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['decode']:.1f} | {r['prefill']:.1f} | {r['size'] / 2**20:.1f} | "
                    f"{r['seconds']:.1f} | {r['rss'] / 2**20:.0f} |")
    ratios = []
    for outtype in sorted({n.rsplit(" ", 1)[1] for n in results}):
        for key in ("decode", "prefill"):
            got = {name: results[f"{name} {outtype}"][key]
                   for name in ("builder dense", "builder pruned", "ours dense", "ours pruned")}
            ratios.append(f"{outtype} {key}: ours/builder dense {got['ours dense'] / got['builder dense']:.2f}x, "
                          f"ours/builder pruned {got['ours pruned'] / got['builder pruned']:.2f}x, "
                          f"ours pruned/builder dense {got['ours pruned'] / got['builder dense']:.2f}x")
    return "\n".join(rows + [""] + ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=Path("/tmp/bx/smollm2"))
    parser.add_argument("--pruned", type=Path, default=Path("/tmp/bx/smollm2-p35"),
                        help="our --format hf output of --src (with prune_plan.json)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-onnx-builder"))
    parser.add_argument("--outtypes", default="int4,fp32")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process timing runs (0: none)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the exports recorded in WORK/results.json again instead of exporting")
    parser.add_argument("--paired", type=int, default=0, metavar="N",
                        help="also time ours against the builder on the same weights in N A B B A pairs")
    parser.add_argument("--agreement", action="store_true",
                        help="also report each int4 export's top-1 agreement with its fp32 twin (needs both outtypes)")
    parser.add_argument("--onnx-logits", choices=("all", "last"), default="all",
                        help="last: ours with --onnx-logits last, the builder with prune_lm_head=true")
    parser.add_argument("--scores", type=Path,
                        help="the scores the pruned plan came from: our exports weigh the int4 blocks' columns by them")
    parser.add_argument("--speed-child", help=argparse.SUPPRESS)
    parser.add_argument("--builder-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--agreement-child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--paired-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        speed_child(args.speed_child)
        return
    if args.builder_child:
        builder_child(args.builder_child)
        return
    if args.agreement_child:
        agreement_child(args.agreement_child[1:], int(args.agreement_child[0]))
        return
    if args.paired_child:
        paired_child(args.paired_child[0], args.paired_child[1], int(args.paired_child[2]))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    outtypes = args.outtypes.split(",")
    if args.reuse:
        recorded = json.loads((args.work / "results.json").read_text())
        results = {name: r for name, r in recorded.items() if name.rsplit(" ", 1)[1] in outtypes}
    else:
        results = exports(args.src, args.pruned, args.work, outtypes, args.onnx_logits == "last", args.scores)
    report = ""
    if args.runs:  # --runs 0: exports (and --paired/--agreement) without the fresh-process timings
        speeds(results, args.runs)
        report = table(results)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    if args.paired:
        report += "\n\n" + paired(results, args.paired)
    if args.agreement:
        report += "\n\n" + agreement(results)
    print(report)


if __name__ == "__main__":
    main()
