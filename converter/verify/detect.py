"""Which format an output folder holds, which file is the model, and its weight type.

verify must never guess from the command line what OUT is: the folder itself says. ONNX and GGUF
folders also carry config.json (and the tokenizer), so the model file decides first: model.onnx,
then one *.gguf, then config.json with safetensors weights. The weight type is read from the
model (GGUF's general.file_type, the ONNX graph's operators and cache type, the safetensors
dtypes), because it sets the logit tolerance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConvertError
from converter.io.gguf_files import model_ggufs

ONNX_MODEL = "model.onnx"


@dataclass(frozen=True)
class Output:
    """One export to verify: its folder, format (hf, gguf, onnx), model file and weight type."""

    folder: Path
    format: str
    model: Path
    outtype: str
    architecture: str


def detect(folder: Path) -> Output:
    """Inspect `folder` and say what it holds; ConvertError when it is not an export verify can load."""
    if not folder.exists():
        raise ConvertError("does not exist; pass the folder an export wrote", folder)
    if not folder.is_dir():
        raise ConvertError("is not a folder; pass the folder an export wrote", folder)
    if (folder / ONNX_MODEL).is_file():
        model = folder / ONNX_MODEL
        return Output(folder, "onnx", model, _onnx_outtype(model), _config_architecture(folder))
    ggufs = model_ggufs(folder)
    if len(ggufs) > 1:
        raise ConvertError(f"holds {len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs)}); verify checks one "
                           "model per folder", folder)
    if ggufs:
        outtype, arch = _gguf_outtype(ggufs[0])
        return Output(folder, "gguf", ggufs[0], outtype, arch)
    weights = sorted(folder.glob("*.safetensors"))
    if (folder / "config.json").is_file() and weights:
        return Output(folder, "hf", folder / "config.json", _hf_outtype(weights[0]), _config_architecture(folder))
    raise ConvertError("is not a compact-convert output: it has no model.onnx, no *.gguf and no config.json with "
                       "*.safetensors", folder)


def _config_architecture(folder: Path) -> str:
    path = folder / "config.json"
    if not path.is_file():
        return ""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"cannot be read ({exc})", path) from None
    return str(config.get("model_type", "")) if isinstance(config, dict) else ""


def _gguf_outtype(path: Path) -> tuple[str, str]:
    """The --outtype name from general.file_type, and general.architecture."""
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"is not a readable GGUF file ({exc})", path) from None

    def value(key: str) -> object:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    file_type, arch = value("general.file_type"), value("general.architecture")
    name = "unknown"
    if isinstance(file_type, int):
        try:
            name = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        except ValueError:
            name = f"file_type {file_type}"
    return name, str(arch or "")


def _onnx_outtype(path: Path) -> str:
    """int4 (MatMulNBits), int8 (dynamic quantization), fp16 (half KV cache) or fp32."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and friends for a corrupt protobuf
        raise ConvertError(f"is not a readable ONNX model ({exc})", path) from None
    ops = {node.op_type for node in graph.node}
    if "MatMulNBits" in ops:
        return "int4"
    if ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}:
        return "int8"
    half = any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in graph.input)
    return "fp16" if half else "fp32"


def _hf_outtype(weights: Path) -> str:
    """The safetensors dtype of the first shard's first floating tensor (what the source had)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "np") as handle:
            names = list(handle.keys())
            if not names:
                return "unknown"
            dtype = str(handle.get_slice(names[0]).get_dtype())
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise ConvertError(f"is not a readable safetensors file ({exc})", weights) from None
    return dtype.lower()
