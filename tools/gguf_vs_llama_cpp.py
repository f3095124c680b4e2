"""Compare our identity-plan GGUF of a tiny family model with what llama.cpp's own converter writes.

The acceptance of every family says: an identity plan's GGUF equals, tensor for tensor and key for
key, llama.cpp's convert_hf_to_gguf.py output for the same checkpoint. This builds the tiny random
model of a family (tests/support/tiny_models.py) with SmolLM2's real tokenizer (a byte-level BPE
whose pre-tokenizer hash llama.cpp's converter knows, "smollm"; the tiny trained tokenizers of the
tests are not recognised by it), runs both converters at f16 (tools/bench_gguf.py's `ours` and
`theirs`) and prints the tensor comparison and every metadata key that differs or that only one
side writes. Needs the llama.cpp sources (`--llama-cpp DIR` with convert_hf_to_gguf.py, or they
are fetched as tools/bench_gguf.py does).

    python -m tools.gguf_vs_llama_cpp smollm3 [--untied] [--llama-cpp DIR] [--work DIR]
    python -m tools.gguf_vs_llama_cpp qwen3_moe [--layout stacked]   # MoE: per_expert (default) or stacked
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from converter.io.gguf_files import model_ggufs
from tools.bench_gguf import compare_files, llama_cpp_source, ours, theirs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _fields(path: Path) -> dict[str, object]:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


def key_differences(mine: Path, reference: Path) -> list[str]:
    """One line per metadata key that differs or exists on one side only (ours first)."""
    a, b = _fields(mine), _fields(reference)
    lines = [f"only ours: {k}" for k in sorted(set(a) - set(b))]
    lines += [f"only theirs: {k} = {str(b[k])[:60]}" for k in sorted(set(b) - set(a))]
    lines += [f"differs: {k}: ours {str(a[k])[:40]} / theirs {str(b[k])[:40]}"
              for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return lines


def build(family: str, tied: bool | None, work: Path, layout: str = "per_expert") -> Path:
    """The tiny model of `family` saved with SmolLM2's tokenizer files (not its weights or config); a
    mixture of experts in expert `layout`, with the settings llama.cpp's graph hard-codes."""
    from tests.support.moe_models import LLAMA_CPP_LOADABLE, save_moe_model
    from tests.support.real_tokenizers import smollm2_tokenizer_dir
    from tests.support.tiny_models import MOE_FAMILIES, build_tiny_model, save_tiny_model

    tokenizer = work / "tokenizer"
    tokenizer.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(smollm2_tokenizer_dir() / name, tokenizer / name)
    model = build_tiny_model(family, vocab_size=49152, tied=tied, **LLAMA_CPP_LOADABLE.get(family, {}))
    if family in MOE_FAMILIES:
        return save_moe_model(model, work / "in", layout, tokenizer)
    return save_tiny_model(model, work / "in", tokenizer_dir=tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gguf_vs_llama_cpp", description=__doc__.splitlines()[0])
    parser.add_argument("family", help="a model_type of tests/support/tiny_models.py FAMILIES, e.g. smollm3")
    parser.add_argument("--untied", action="store_true", help="an untied lm_head (default: the family's own)")
    parser.add_argument("--layout", choices=("per_expert", "stacked"), default="per_expert",
                        help="a mixture of experts' checkpoint layout (llama.cpp's converter reads stacked Qwen MoE "
                             "checkpoints only)")
    parser.add_argument("--llama-cpp", type=Path, help="folder with llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from converter.arch import load_arch
    from converter.plan import PrunePlan

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        source = llama_cpp_source(args.llama_cpp, work / "llama-cpp")
        model = build(args.family, False if args.untied else None, work, args.layout)
        plan = PrunePlan.identity(load_arch(model)).save(work / "identity-plan.json")
        ours(model, work / "ours", plan)
        (work / "theirs").mkdir()
        theirs(model, work / "theirs" / "model.gguf", source)
        mine = model_ggufs(work / "ours")[0]
        print(compare_files(mine, work / "theirs" / "model.gguf"))
        for line in key_differences(mine, work / "theirs" / "model.gguf"):
            print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
