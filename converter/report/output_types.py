"""The report's "Output types" section: each tensor kind's stored type, read back from the written files.

Quantised outputs do not always store a weight in the requested type: llama.cpp falls back to a
32-block type (or F16) for rows that are not whole blocks, and onnxruntime's MatMulNBits pads such
rows with zeros. Which happened is read from the export itself, after it is written: the GGUF's
tensor table (exporters.gguf.written_types, which also says which tensors fell back from their
dense counterpart's type), the ONNX graph's initializers and MatMulNBits /
GatherBlockQuantized nodes (weights not loaded). Each kind (layer numbers replaced by `*`) gets its
types, row length before and after, bytes, and the bytes it would have had without the fallback
or padding, so a user sees what an FFN width off the block grid costs.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from converter.prune import PrunedCheckpoint
from exporters.options import ExportOptions

HF_REASON = "--format hf keeps the source dtype of every tensor"


def kind_of(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def output_types_section(fmt: str, staged: Path, pruned: PrunedCheckpoint, options: ExportOptions) -> dict[str, Any]:
    """report.json's "output_types": per tensor kind, the type stored and any fallback, with their bytes."""
    if fmt == "gguf":
        from exporters.gguf.provenance import file_stem

        model = staged / f"{file_stem(pruned)}.gguf"
        if model.is_file():
            return _gguf(model, pruned, options)
    if fmt == "onnx" and (staged / "model.onnx").is_file():
        return _onnx(staged / "model.onnx")
    return {"available": False, "reason": HF_REASON if fmt == "hf" else f"the {fmt} model file was not found"}


def _gguf(path: Path, pruned: PrunedCheckpoint, options: ExportOptions) -> dict[str, Any]:
    from exporters.gguf.written_types import export_types

    outtype, types = export_types(path, pruned, options.outtype)
    kinds: dict[str, dict[str, Any]] = {}
    for t in types:
        k = kinds.setdefault(t.kind, {"kind": t.kind, "tensors": 0, "row_length": t.cols,
                                      "dense_row_length": t.dense_cols, "types": Counter(), "dense_types": Counter(),
                                      "fell_back": 0, "bytes": 0, "bytes_without_fallback": 0})
        k["tensors"] += 1
        k["types"][t.written.name] += 1
        k["dense_types"][t.dense.name] += 1
        k["fell_back"] += int(t.fell_back)
        k["bytes"] += t.nbytes
        k["bytes_without_fallback"] += t.nbytes_as_dense
    rows = [{**k, "types": dict(sorted(k["types"].items())), "dense_types": dict(sorted(k["dense_types"].items()))}
            for _, k in sorted(kinds.items())]
    extra = sum(k["bytes"] - k["bytes_without_fallback"] for k in rows)
    size = path.stat().st_size
    return {"available": True, "format": "gguf", "outtype": outtype.name, "file": path.name,
            "read_back_with": "the GGUF's tensor table", "kinds": rows,
            "fallback_tensors": sum(k["fell_back"] for k in rows),
            "file_bytes": size, "file_bytes_without_fallback": size - extra,
            "note": "tensors of one dimension (norms, biases) are F32; a fallback is a type other than the one "
                    "the dense model's export gives the same tensor"}


def _onnx(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load_model(path, load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    kinds: dict[str, dict[str, Any]] = {}
    blocked: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[0] if node.op_type == "GatherBlockQuantized" else node.input[1]
        if weight not in inits:
            continue
        blocked.add(weight)
        bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
        dims = list(inits[weight].dims)
        rows, blocks = dims[0], dims[1] if len(dims) == 3 else dims[-1] * 8 // bits // block
        cols = int(attrs["K"]) if "K" in attrs else blocks * block
        padded = -(-cols // block) * block
        settings = [f"block {block}", *(["zero points"] if len(node.input) > 3 and node.input[3] else []),
                    *([f"accuracy level {attrs.get('accuracy_level', 0)}"] if node.op_type == "MatMulNBits" else [])]
        k = kinds.setdefault(kind_of(weight), {"kind": kind_of(weight), "tensors": 0,
                                               "type": f"int{bits} {node.op_type} ({', '.join(settings)})",
                                               "row_length": cols, "padded_row_length": padded, "bytes": 0,
                                               "bytes_without_padding": 0})
        k["tensors"] += 1
        k["bytes"] += rows * padded * bits // 8
        k["bytes_without_padding"] += rows * cols * bits // 8
    for name, t in inits.items():
        if name in blocked or len(t.dims) < 2 or name.endswith("_scales") or name.endswith("_zero_points"):
            continue
        k = kinds.setdefault(kind_of(name), {"kind": kind_of(name), "tensors": 0,
                                             "type": onnx.TensorProto.DataType.Name(t.data_type).lower(),
                                             "row_length": int(t.dims[-1])})
        k["tensors"] += 1
    rows_out = [k for _, k in sorted(kinds.items())]
    return {"available": True, "format": "onnx", "file": path.name, "read_back_with": "onnx (graph only)",
            "kinds": rows_out,
            "padding_bytes": sum(k.get("bytes", 0) - k.get("bytes_without_padding", 0) for k in rows_out),
            "note": "MatMulNBits and GatherBlockQuantized pad a row that is not whole blocks with zeros; no type "
                    "falls back"}


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def output_types_lines(section: dict[str, Any]) -> list[str]:
    """report.md's "Output types" section."""
    lines = ["## Output types", ""]
    if not section.get("available"):
        return [*lines, f"{section.get('reason', 'not available')}.", ""]
    if section["format"] == "gguf":
        lines += [f"Read back from `{section['file']}`'s tensor table ({section['outtype']}).", "",
                  "| tensor kind | tensors | row length (dense) | type | dense export's type | bytes | without "
                  "fallback |", "| --- | ---: | ---: | --- | --- | ---: | ---: |"]
        for k in section["kinds"]:
            types = ", ".join(f"{t} x{n}" for t, n in k["types"].items())
            dense = ", ".join(f"{t} x{n}" for t, n in k["dense_types"].items())
            mark = f" **({k['fell_back']} fell back)**" if k["fell_back"] else ""
            lines.append(f"| `{k['kind']}` | {k['tensors']} | {k['row_length']} ({k['dense_row_length']}) | "
                         f"{types}{mark} | {dense} | {k['bytes']:,} | {k['bytes_without_fallback']:,} |")
        lines += ["", f"{section['fallback_tensors']} tensors fell back from their dense counterpart's type; the "
                  f"file has {section['file_bytes']:,} bytes and would have had "
                  f"{section['file_bytes_without_fallback']:,} without the fallback. {_sentence(section['note'])}.",
                  ""]
        return lines
    lines += [f"Read from `{section['file']}`'s graph.", "", "| tensor kind | tensors | type | row length | "
              "padded to |", "| --- | ---: | --- | ---: | ---: |"]
    for k in section["kinds"]:
        lines.append(f"| `{k['kind']}` | {k['tensors']} | {k['type']} | {k['row_length']} | "
                     f"{k.get('padded_row_length', k['row_length'])} |")
    lines += ["", f"Padding stored: {section['padding_bytes']:,} bytes. {_sentence(section['note'])}.", ""]
    return lines
