"""Hugging Face exporter: sharded safetensors + index + configs + tokenizer, streamed.

Shards are laid out like transformers' `save_pretrained` (greedy fill up to max_shard_size, a
tensor larger than the limit alone in its shard, `model-0000K-of-0000N.safetensors` plus
`model.safetensors.index.json`, or one `model.safetensors`), so stock `from_pretrained` loads
the result. Untouched tensors, and row-pruned ones whose kept rows form long runs, are copied file
to file by the kernel (one copy per run; asking the disk for the next tensor ahead with WILLNEED
measured slower); the others (down_proj columns, scattered rows) are read and gathered by worker
threads ahead of the writer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from converter.io.buffers import BufferPool
from converter.io.safetensors_writer import DeclaredTensor, ShardWriter
from converter.progress import progress_bar
from converter.prune import PlannedTensor, PrunedCheckpoint
from converter.readahead import read_ahead
from exporters.companions import write_companions
from exporters.options import ExportOptions

if TYPE_CHECKING:
    from converter.tokenizer import TokenizerRewrite

INDEX_NAME = "model.safetensors.index.json"
# Tensors read (and gathered) ahead of the writer, each by its own thread: with two, the disk always has
# a read queued while the other thread gathers; measured 15% faster than one on a cold 2 GB rewrite.
READ_AHEAD_DEPTH = 2


def plan_shards(tensors: list[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
    """Greedy shard layout: fill each shard up to the limit; an oversized tensor gets its own."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_weights(pruned: PrunedCheckpoint, out_dir: Path, options: ExportOptions) -> list[Path]:
    """Stream every pruned tensor into shards; returns the weight files (and index) written."""
    shards = plan_shards(pruned.planned(), options.max_shard_size)
    names = shard_names(len(shards))
    total = sum(t.nbytes for shard in shards for t in shard)
    written: list[Path] = []
    order = [t for shard in shards for t in shard]
    pool = BufferPool()
    stream = read_ahead(order, lambda t: None if pruned.is_file_copy(t) else pruned.read(t, pool),
                        depth=READ_AHEAD_DEPTH)
    with progress_bar(options.progress, total=total, unit="B", unit_scale=True, desc="hf") as bar:
        for name, shard in zip(names, shards):
            declared = [DeclaredTensor(t.name, t.dtype, t.shape) for t in shard]
            with ShardWriter(out_dir / name, declared) as writer:
                for _ in shard:
                    planned, data = next(stream)
                    if data is None:
                        writer.write_with(planned.name, planned.nbytes,
                                          lambda fd, p=planned: pruned.copy_source(p, fd))  # type: ignore[misc]
                    else:
                        writer.write(planned.name, data)
                        pool.give(data)
                    del data
                    bar.update(planned.nbytes)
            written.append(out_dir / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard}}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        written.append(out_dir / INDEX_NAME)
    return written


def export(pruned: PrunedCheckpoint, tokenizer: TokenizerRewrite | None, out_dir: Path,
           options: ExportOptions) -> list[Path]:
    """Write a Hugging Face model folder for the pruned checkpoint into out_dir."""
    written = write_weights(pruned, out_dir, options)
    written += write_companions(pruned, tokenizer, out_dir)
    return written
