"""Expert stacks for llama.cpp: each projection of a layer's experts as one [experts, rows, cols] GGUF tensor.

llama.cpp's mixture-of-experts graphs read `blk.N.ffn_{gate,up,down}_exps` stacked over the experts; its
converter stacks the released checkpoints' per-expert 2-D tensors and splits transformers' fused
`gate_up_proj` into its gate and up rows (convert_hf_to_gguf.py, Qwen2MoeModel.modify_tensors). Here a stack
is produced expert by expert: each expert's pruned slab (its own 2-D tensor, or one slab of a stacked 3-D
tensor, of which gate_up keeps one row block) is read and handed on before the next is read, so memory holds
one expert's slab and the writer's bounded chunks, never the stack. Which roles become which stacks is data
(converter.arch.gguf_names.EXPERT_STACKS).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from converter.arch.gguf_names import EXPERT_STACKS
from converter.errors import ConvertError
from converter.prune import PlannedTensor, PrunedCheckpoint


@dataclass(frozen=True)
class ExpertStack:
    """Where one GGUF stack's expert slabs come from: one 2-D tensor per expert, in expert order, or one
    stacked 3-D tensor whose rows hold `blocks` equal blocks per expert, of which the stack is block `block`."""

    parts: tuple[PlannedTensor, ...]
    block: int = 0
    blocks: int = 1

    @property
    def stacked(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].experts_keep is not None

    def slabs(self, pruned: PrunedCheckpoint) -> Iterator[np.ndarray]:
        """Each expert's pruned slab as uint8 rows [rows, row_bytes], in expert order."""
        if self.stacked:
            slabs = pruned.expert_slabs(self.parts[0], ahead=True)  # read while the previous one converts
            for _ in self.parts[0].experts_keep or ():
                yield self._block(next(slabs))  # nothing of one expert stays bound here while the next is read
            return
        for part in self.parts:
            yield pruned.read(part).reshape(part.shape[0], -1)


    def _block(self, slab: np.ndarray) -> np.ndarray:
        rows = slab.shape[0] // self.blocks
        return slab[self.block * rows:(self.block + 1) * rows].reshape(rows, -1)


@dataclass(frozen=True)
class PlannedStack:
    """One GGUF expert stack: its llama.cpp name, shape (numpy order) and source."""

    name: str
    shape: tuple[int, ...]
    source: ExpertStack


def expert_stacks(pruned: PrunedCheckpoint) -> dict[str, list[PlannedStack]]:
    """Every expert stack of the GGUF, keyed by the checkpoint tensor that comes first among its sources (the
    place in source order where the stacks are written); empty for a dense model."""
    groups: dict[tuple[str, int], list[PlannedTensor]] = {}
    for planned in pruned.planned():
        if planned.role in EXPERT_STACKS:
            groups.setdefault((planned.role, planned.layer or 0), []).append(planned)
    stacks: dict[str, list[PlannedStack]] = {}
    for (role, layer), parts in groups.items():
        names = [n.format(layer=layer) for n in EXPERT_STACKS[role]]
        if {p.dtype for p in parts} != {parts[0].dtype}:
            raise ConvertError(f"the experts of '{parts[0].name}' mix dtypes {sorted({p.dtype for p in parts})}; "
                               "a GGUF stack holds one", pruned.source.folder)
        if parts[0].experts_keep is not None:
            experts, rows, cols = parts[0].shape
            shape = (experts, rows // len(names), cols)
            stacks[parts[0].name] = [PlannedStack(name, shape, ExpertStack((parts[0],), i, len(names)))
                                     for i, name in enumerate(names)]
            continue
        ordered = tuple(sorted(parts, key=lambda p: _expert_of(pruned, p)))
        if len(ordered) != pruned.spec.dims.experts:
            raise ConvertError(f"layer {layer} has {len(ordered)} '{role}' expert tensors, the config says "
                               f"{pruned.spec.dims.experts} experts", pruned.source.folder)
        stacks[parts[0].name] = [PlannedStack(names[0], (len(ordered), *ordered[0].shape), ExpertStack(ordered))]
    return stacks


def _expert_of(pruned: PrunedCheckpoint, planned: PlannedTensor) -> int:
    slot = pruned.spec.slot(planned.name)
    return slot.expert if slot is not None and slot.expert is not None else 0
