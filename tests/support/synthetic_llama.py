"""A Llama-shaped checkpoint of random bytes, sharded like save_pretrained, of any size.

The rewrite benchmarks and the interrupt tests need checkpoints of a gigabyte or more whose
contents do not matter; writing noise is far faster than building a real model of that size.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN, FFN, VOCAB, HEADS, KV_HEADS = 2048, 5632, 32000, 16, 4


def _tensors(layers: int, hidden: int, ffn: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    kv = hidden // HEADS * KV_HEADS
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (kv, hidden)),
                (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (ffn, hidden)), (p + "mlp.up_proj.weight", (ffn, hidden)),
                (p + "mlp.down_proj.weight", (hidden, ffn)), (p + "input_layernorm.weight", (hidden,)),
                (p + "post_attention_layernorm.weight", (hidden,))]
    return out + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def write_synthetic(folder: Path, layers: int, shard_bytes: int = 1 << 30, hidden: int = HIDDEN, ffn: int = FFN,
                    vocab: int = VOCAB) -> int:
    """A Llama-shaped bf16 checkpoint with random bytes, sharded like save_pretrained."""
    from converter.io.safetensors_writer import DeclaredTensor, ShardWriter
    from exporters.hf import INDEX_NAME, plan_shards, shard_names

    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, size=64 << 20, dtype=np.uint8)
    declared = [DeclaredTensor(n, "BF16", s) for n, s in _tensors(layers, hidden, ffn, vocab)]
    shards = plan_shards(declared, shard_bytes)  # type: ignore[arg-type]
    names = shard_names(len(shards))
    for name, shard in zip(names, shards):
        with ShardWriter(folder / name, list(shard)) as w:
            for t in shard:
                reps = -(-t.nbytes // noise.size)
                w.write(t.name, np.tile(noise, reps)[: t.nbytes] if reps > 1 else noise[: t.nbytes])
    index = {"metadata": {"total_size": sum(t.nbytes for t in declared)},
             "weight_map": {t.name: n for n, s in zip(names, shards) for t in s}}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": vocab, "tie_word_embeddings": False,
              "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    return sum(t.nbytes for t in declared)
