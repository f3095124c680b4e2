"""The stacked expert parameters transformers builds, read from the per-expert tensors checkpoints hold.

transformers 5 keeps a layer's experts as stacked parameters (`mlp.experts.gate_up_proj`
[experts, 2*moe_ffn, hidden], `mlp.experts.down_proj` [experts, hidden, moe_ffn]) while
checkpoints on the hub, and its own save_pretrained, hold one tensor per expert and projection:
`mlp.experts.{e}.gate_proj.weight` (Qwen2/3-MoE, OLMoE) or Mixtral's
`block_sparse_moe.experts.{e}.w1.weight` (w1 gate, w3 up, w2 down, and the router as
`block_sparse_moe.gate.weight`), which its conversion mapping stacks on load. Scoring fills the
model skeleton itself (converter.score.engine), so it does the same stacking here, one layer at a
time, from the naming variants below (data, not code); a checkpoint that already holds the stacked
name is read as is by the engine.
"""
from __future__ import annotations

import torch

from converter.io import Checkpoint
from converter.io.dtypes import raw_to_torch

EXPERTS = ".experts."
# Per stacked parameter, the projections concatenated along its rows, in each naming variant.
PER_EXPERT: dict[str, tuple[tuple[str, ...], ...]] = {
    "gate_up_proj": (("gate_proj", "up_proj"), ("w1", "w3")),
    "down_proj": (("down_proj",), ("w2",)),
}
PARENT_ALIASES = (".mlp.", ".block_sparse_moe.")  # the module's parent name, then the checkpoint's


def _read(checkpoint: Checkpoint, name: str) -> torch.Tensor:
    info = checkpoint.info(name)
    return raw_to_torch(checkpoint.raw(name), info.dtype, info.shape)


def _aliases(name: str) -> list[str]:
    module, checkpoint = PARENT_ALIASES
    return [name, name.replace(module, checkpoint, 1)] if module in name else [name]


def _stacked(checkpoint: Checkpoint, base: str, parts: tuple[str, ...]) -> torch.Tensor | None:
    """Experts 0, 1, ... of `base` (ending in '.experts.'), each its parts concatenated by rows."""
    rows: list[torch.Tensor] = []
    while all(f"{base}{len(rows)}.{part}.weight" in checkpoint for part in parts):
        rows.append(torch.cat([_read(checkpoint, f"{base}{len(rows)}.{part}.weight") for part in parts]))
    return torch.stack(rows) if rows else None


def read_moe_parameter(checkpoint: Checkpoint, name: str) -> torch.Tensor | None:
    """The tensor for module parameter `name` that the checkpoint holds under a per-expert or Mixtral
    name, or None when it holds no such tensor (the caller then reports it missing)."""
    for alias in _aliases(name):
        if alias != name and alias in checkpoint:
            return _read(checkpoint, alias)
        head, sep, leaf = alias.rpartition(EXPERTS)
        if not sep or leaf not in PER_EXPERT:
            continue
        for parts in PER_EXPERT[leaf]:
            stacked = _stacked(checkpoint, head + EXPERTS, parts)
            if stacked is not None:
                return stacked
    return None
