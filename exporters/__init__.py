"""Exporters: each turns a PrunedCheckpoint and its rewritten tokenizer into one output format.

Every exporter has the same small interface, `export(pruned, tokenizer, out_dir, options) ->
list[Path]`, and writes only into `out_dir`, which the caller stages in a temporary folder and
moves into place when the export has completed.
"""
from __future__ import annotations
