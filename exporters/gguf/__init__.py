"""GGUF exporter: one `<name>.gguf` that stock llama.cpp loads, written by streaming.

Order of work: everything that can be refused is refused first (family, hyperparameters,
tensors, output type and the llama extra, tokenizer layout, the source's pre-tokenizer), then
the companion files are written (the rewritten tokenizer among them), the vocabulary is read
from them, and the GGUF is streamed tensor by tensor (see writer.py). K-quant types are made by
llama.cpp's own quantizer from a 16-bit GGUF written first and removed afterwards; with the
scores' matmul input sums (ExportOptions.importance) they are weighted by the importance matrix,
also written beside the GGUF as `imatrix.gguf` (exporters/gguf/imatrix.py).
References: llama.cpp's convert_hf_to_gguf.py (conversion/*.py), gguf-py's constants.py and
tensor_mapping.py, llama.cpp's src/llama-vocab.cpp.
"""
from __future__ import annotations

import sys

from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter.prune import PrunedCheckpoint
from exporters.companions import write_companions
from exporters.gguf.hparams import gguf_conventions, hyperparameters, rope_factors, rope_freqs
from exporters.gguf.imatrix import IMATRIX_FILE, importance_matrix, write_imatrix
from exporters.gguf.pre_tokenizer_choice import identify_pre
from exporters.gguf.provenance import file_stem, provenance
from exporters.gguf.quant import intermediate, quantize_with_llama_cpp, resolve_outtype
from exporters.gguf.tensors import float_tensors, plan_tensors
from exporters.gguf.vocab import read_tokenizer_json, tokenizer_model, vocabulary
from exporters.gguf.gguf_file import write_gguf
from exporters.gguf.written_types import warn_fallbacks
from exporters.options import ExportOptions

if TYPE_CHECKING:
    from converter.tokenizer import TokenizerRewrite

__all__ = ["export"]


def _source_dtype(pruned: PrunedCheckpoint) -> str:
    embed = [p for p in pruned.planned() if p.role == "embed"]
    return embed[0].dtype if embed else pruned.planned()[0].dtype


def _source_tokenizer(pruned: PrunedCheckpoint, options: ExportOptions) -> tuple[dict[str, Any], str, str | None]:
    """The source tokenizer.json, its `tokenizer.ggml.model` and pre-tokenizer name, before ids are remapped.

    When every token is kept, the tokenizer.json written beside the GGUF is a copy of this one, so
    the parsed file is reused rather than read twice.
    """
    path = pruned.source.folder / "tokenizer.json"
    data = read_tokenizer_json(pruned.source.folder)
    model = tokenizer_model(data, path)
    return data, model, identify_pre(path, data, options.pre_tokenizer)[0] if model == "gpt2" else None


def export(pruned: PrunedCheckpoint, tokenizer: TokenizerRewrite | None, out_dir: Path,
           options: ExportOptions) -> list[Path]:
    """Write `<name>.gguf` and the companion files into out_dir; return the paths written."""
    llama_cpp = gguf_conventions(pruned)
    arch = llama_cpp.arch
    towers = [prefix.rstrip(".") for prefix in pruned.spec.family_record.passthrough]
    if towers:
        print(f"note: GGUF holds the text model only; the {' and '.join(towers)} tensors are not exported "
              "(no mmproj file is written)", file=sys.stderr)
    outtype = resolve_outtype(options.outtype, _source_dtype(pruned))
    written_type = intermediate(outtype, _source_dtype(pruned))
    kvs = hyperparameters(pruned)
    freqs = rope_freqs(pruned.spec.config, pruned.spec.dims.head_dim, pruned.source.folder / "config.json")
    tensors = plan_tensors(pruned, llama_cpp, written_type, freqs)
    tensors += float_tensors(rope_factors(llama_cpp, pruned.spec.config, pruned.spec.dims.head_dim,
                                          pruned.source.folder / "config.json"))
    imatrix = (importance_matrix(tensors, options.importance, pruned.source.folder)
               if options.importance is not None else None)
    source_tokenizer, model, pre = _source_tokenizer(pruned, options)

    written = write_companions(pruned, tokenizer, out_dir)
    # Without a rewrite the companions are byte copies, so read the source: errors then name the user's files.
    unchanged = source_tokenizer if tokenizer is None else None
    vocab_kvs = vocabulary(out_dir if tokenizer is not None else pruned.source.folder, model, pre, pruned.dims.vocab,
                           unchanged)
    del source_tokenizer, unchanged
    if imatrix is not None:
        written.append(write_imatrix(out_dir / IMATRIX_FILE, imatrix, arch))
    all_kvs = provenance(pruned, written_type, options) + kvs + vocab_kvs
    final = out_dir / f"{file_stem(pruned)}.gguf"
    if not outtype.needs_llama_cpp:
        write_gguf(final, arch, all_kvs, tensors, pruned, options.progress)
        warn_fallbacks(final, tensors, outtype)
        return [final, *written]
    staging = out_dir / f".{final.stem}.{written_type.name}.gguf"
    write_gguf(staging, arch, all_kvs, tensors, pruned, options.progress)
    try:
        quantize_with_llama_cpp(staging, final, outtype, imatrix)
    finally:
        staging.unlink(missing_ok=True)
    warn_fallbacks(final, tensors, outtype)
    return [final, *written]
