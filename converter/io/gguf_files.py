"""Which .gguf files in an export folder are models: all but llama.cpp's importance matrix.

A GGUF export writes `imatrix.gguf` beside the model when the scores carry the matmul input sums
(exporters.gguf.imatrix), so "the .gguf in the folder" is no longer one file. Kept in the io layer,
free of torch and gguf-py, because verify's folder detection and torch-free commands read it.
"""
from __future__ import annotations

from pathlib import Path

IMATRIX_FILE = "imatrix.gguf"


def model_ggufs(folder: Path) -> list[Path]:
    """The model .gguf files in an export folder, sorted: every .gguf but the importance matrix beside them."""
    return sorted(p for p in folder.glob("*.gguf") if p.name != IMATRIX_FILE)
