"""A Qwen3-MoE-shaped bf16 checkpoint of random weights, in either expert layout, of any size.

The MoE rewrite benchmark (tools/bench_rewrite_moe.py) needs checkpoints of gigabytes whose values do not
matter but whose tensor names, shapes and layout do: transformers 5 saves the experts as two stacked 3-D
tensors per layer (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), released checkpoints hold one
2-D gate/up/down tensor per expert (`mlp.experts.{e}.gate_proj.weight`, ...). The tensor list comes from
the qwen3_moe family record (converter/arch), so the files are exactly what compact-convert expects of each
layout; the values are one buffer of N(0, 0.02) bf16 noise tiled over every tensor (norms at 1), which
writes at disk speed and converts to f16 without overflow. The tokenizer is the real Qwen2.5 one
(tests/support/real_tokenizers.py), whose 151936-row embedding Qwen3-MoE shares.

    python -m tools.synthetic_moe OUT_DIR [--layout stacked|per-expert] [--layers 6] [--experts 48]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

LAYOUTS = ("stacked", "per-expert")
# Qwen3-30B-A3B's shapes but for the number of experts (128) and layers (48).
QWEN3_MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 48, "num_experts_per_tok": 8,
    "norm_topk_prob": True, "num_hidden_layers": 6, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False, "hidden_act": "silu", "decoder_sparse_step": 1, "mlp_only_layers": [],
    "attention_bias": False, "router_aux_loss_coef": 0.001, "output_router_logits": False,
    "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16", "dtype": "bfloat16",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def moe_config(layers: int, experts: int, hidden: int = 2048) -> dict[str, object]:
    """The config with `layers` layers of `experts` experts, each token routed to 8 of them (fewer if fewer)."""
    return {**QWEN3_MOE_CONFIG, "num_hidden_layers": layers, "num_experts": experts,
            "num_experts_per_tok": min(8, experts), "hidden_size": hidden}


def _noise(count: int, seed: int) -> np.ndarray:
    """`count` bf16 values drawn from N(0, 0.02), as bytes (bf16 is a float32's upper half)."""
    values = np.random.default_rng(seed).standard_normal(count, dtype=np.float32) * np.float32(0.02)
    return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def write_synthetic_moe(folder: Path, layout: str, config: dict[str, object], tokenizer_from: Path,
                        shard_bytes: int = 2 << 30, seed: int = 0) -> int:
    """Write the checkpoint (sharded like save_pretrained, with its index) to `folder`; returns its tensor bytes."""
    from converter.arch import resolve_arch
    from converter.io.safetensors_writer import DeclaredTensor, ShardWriter
    from exporters.hf import INDEX_NAME, plan_shards, shard_names

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, folder / name)
    spec = resolve_arch(config, folder / "config.json")
    slots = [s for s in spec.slots if s.required and s.layout in (None, layout)]
    declared = [DeclaredTensor(s.name, "BF16", s.shape(spec.dims)) for s in slots]
    noise = _noise(32 << 20, seed)
    one = np.full(spec.dims.hidden, 0x3F80, dtype=np.uint16).view(np.uint8)  # bf16 1.0
    shards: list[list[DeclaredTensor]] = plan_shards(declared, shard_bytes)  # type: ignore[arg-type,assignment]
    names = shard_names(len(shards))
    for name, shard in zip(names, shards):
        with ShardWriter(folder / name, shard) as writer:
            for t in shard:
                if t.name.endswith("norm.weight"):
                    writer.write(t.name, np.resize(one, t.nbytes))
                    continue
                reps = -(-t.nbytes // noise.size)
                writer.write(t.name, np.tile(noise, reps)[: t.nbytes] if reps > 1 else noise[: t.nbytes])
    total = sum(t.nbytes for t in declared)
    index = {"metadata": {"total_size": total}, "weight_map": {t.name: n for n, s in zip(names, shards) for t in s}}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--layout", choices=LAYOUTS, default="stacked")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--experts", type=int, default=48)
    args = p.parse_args(argv)
    from tests.support.real_tokenizers import qwen_tokenizer_dir

    total = write_synthetic_moe(args.out, args.layout, moe_config(args.layers, args.experts), qwen_tokenizer_dir())
    print(f"wrote {args.out} ({total / 1e9:.2f} GB of tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
