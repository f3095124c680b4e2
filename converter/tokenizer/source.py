"""Read every tokenizer artefact of a model folder once, with errors that name the file.

The keep-set planner and the writer both work from a `TokenizerSource`: the parsed JSON files
(tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json,
config.json, generation_config.json) and the chat templates, wherever the folder keeps them
(chat_template.jinja, chat_template.json, tokenizer_config.json, additional_chat_templates/).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import ConvertError
from converter.io.jsonfile import read_json_object
from converter.io.model_folder import check_links
from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.shared_json import read_shared_json

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS = "added_tokens.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
MODEL_CONFIGS = ("config.json", "generation_config.json")
MAX_TOKENIZER_JSON_BYTES = 1 << 30
MAX_CONFIG_BYTES = 64 << 20


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template's source text and the file it came from (for messages about it)."""

    path: Path
    text: str


@dataclass(frozen=True)
class TokenizerSource:
    """A model folder's tokenizer files, parsed; absent optional files are empty dicts."""

    root: Path
    tokenizer_json: dict[str, Any]
    tokenizer_config: dict[str, Any]
    special_tokens_map: dict[str, Any]
    added_tokens: dict[str, Any]
    model_configs: dict[str, dict[str, Any]]
    chat_templates: tuple[ChatTemplate, ...]

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def sentencepiece_model(self) -> Path | None:
        path = self.root / SENTENCEPIECE_MODEL
        return path if path.is_file() else None


def read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    """A JSON object (size-capped, see converter.io.jsonfile), or {} for an absent optional file."""
    if not path.is_file() and not required:
        return {}
    read = read_shared_json if path.name == TOKENIZER_JSON else read_json_object  # see shared_json
    limit = MAX_TOKENIZER_JSON_BYTES if path.name == TOKENIZER_JSON else MAX_CONFIG_BYTES
    try:
        return read(path, limit, "a tokenizer or model configuration file",
                    "is missing; tokenizer surgery needs a Hugging Face tokenizer.json")
    except ConvertError as exc:
        raise TokenizerError(str(exc)) from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot be read ({type(exc).__name__}: {exc})", path) from exc


def _config_templates(value: object, path: Path) -> list[ChatTemplate]:
    """tokenizer_config.json's chat_template: a string or a list of {name, template}."""
    if value is None:
        return []
    if isinstance(value, str):
        return [ChatTemplate(path, value)]
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in value):
        return [ChatTemplate(path, t["template"]) for t in value]
    raise TokenizerError("chat_template is neither a string nor a list of {name, template} objects", path)


def read_chat_templates(root: Path, tokenizer_config: dict[str, Any]) -> tuple[ChatTemplate, ...]:
    """Every chat template of the folder, wherever it is kept; refuses one that is not text."""
    templates = _config_templates(tokenizer_config.get("chat_template"), root / TOKENIZER_CONFIG)
    if (root / CHAT_TEMPLATE_JINJA).is_file():
        templates.append(ChatTemplate(root / CHAT_TEMPLATE_JINJA, _read_text(root / CHAT_TEMPLATE_JINJA)))
    if (root / CHAT_TEMPLATE_JSON).is_file():
        templates += _config_templates(read_json(root / CHAT_TEMPLATE_JSON).get("chat_template"),
                                       root / CHAT_TEMPLATE_JSON)
    if (root / CHAT_TEMPLATE_DIR).is_dir():
        templates += [ChatTemplate(p, _read_text(p)) for p in sorted((root / CHAT_TEMPLATE_DIR).glob("*.jinja"))]
    return tuple(templates)


def read_source(src_dir: Path) -> TokenizerSource:
    """Parse the folder's tokenizer files; only tokenizer.json is required, and none may link out of the folder."""
    root = Path(src_dir)
    if not root.is_dir():
        raise TokenizerError("is not a folder", root)
    check_links(root)
    tokenizer_config = read_json(root / TOKENIZER_CONFIG)
    return TokenizerSource(
        root=root,
        tokenizer_json=read_json(root / TOKENIZER_JSON, required=True),
        tokenizer_config=tokenizer_config,
        special_tokens_map=read_json(root / SPECIAL_TOKENS_MAP),
        added_tokens=read_json(root / ADDED_TOKENS),
        model_configs={name: read_json(root / name) for name in MODEL_CONFIGS},
        chat_templates=read_chat_templates(root, tokenizer_config),
    )
