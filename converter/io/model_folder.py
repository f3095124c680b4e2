"""Which paths a model folder's files may resolve to.

A model folder is read, never trusted: a `tokenizer.model` or shard that is a symlink to
`/etc/shadow` (or to another user's model) must be neither read nor copied into the output. The
rule is stated once, here: a file of the folder must resolve inside the folder itself, with one
exception, the place most models live: a Hugging Face cache snapshot,
`~/.cache/huggingface/hub/models--ORG--NAME/snapshots/<revision>/`, whose files are relative
symlinks into `../../blobs/<sha256>`. There a file may resolve anywhere inside that repository
folder (`models--ORG--NAME/`, recognised by its layout: `snapshots/` and `blobs/` side by side),
and nowhere else: not into another repository, not above it, not through an absolute link to
elsewhere, and never through a link loop. See huggingface_hub's cache layout,
https://huggingface.co/docs/huggingface_hub/guides/manage-cache. Every reader and copier of
model-folder files goes through `resolve_inside` or `check_links`.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from converter.errors import ConvertError

SNAPSHOTS = "snapshots"
BLOBS = "blobs"
REPO_PREFIX = "models--"
TEMPLATE_DIR = "additional_chat_templates"
# What the tool opens from a model folder: configs, index and tokenizer JSON, chat templates,
# the SentencePiece model and the weights.
READ_SUFFIXES = (".json", ".jinja", ".model", ".safetensors")


class LinkRefused(ConvertError):
    """A file of a model folder that resolves where it may not; `problem` is the message without the path."""

    def __init__(self, problem: str, path: Path) -> None:
        super().__init__(problem, path)
        self.problem = problem


def repository_folder(folder: Path) -> Path | None:
    """The `models--ORG--NAME` folder if `folder` is one of its snapshots, else None."""
    real = Path(os.path.realpath(folder))
    repo = real.parent.parent
    if (real.parent.name == SNAPSHOTS and repo.name.startswith(REPO_PREFIX) and len(repo.name) > len(REPO_PREFIX)
            and (repo / BLOBS).is_dir()):
        return repo
    return None


def allowed_root(folder: Path) -> Path:
    """Where `folder`'s files may resolve: its repository folder for a cache snapshot, else the folder itself."""
    return repository_folder(folder) or Path(os.path.realpath(folder))


def resolve_inside(path: Path, folder: Path) -> Path:
    """`path`'s real location, or a ConvertError naming `path` if it lies where `folder`'s files may not.

    An absent file (or a dangling link) is not refused here, only a place it points to outside:
    the caller says what is missing in its own words.
    """
    try:
        real = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        real = Path(os.path.realpath(path))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused("is a symlink loop, which never reaches a file; refusing to read it", path) from None
        raise ConvertError(f"cannot be resolved ({exc.strerror or exc})", path) from None
    if not real.is_relative_to(allowed_root(folder)):
        raise LinkRefused("is a link that leads outside the model folder; refusing to read it", path)
    return real


def check_links(folder: Path) -> None:
    """Refuse the folder if any file the tool may read from it (see READ_SUFFIXES) resolves where it may not."""
    candidates = [folder / name for name in _names(folder)]
    templates = folder / TEMPLATE_DIR
    if templates.is_symlink():
        resolve_inside(templates, folder)
    if templates.is_dir():
        candidates += [templates / name for name in _names(templates)]
    for path in candidates:
        resolve_inside(path, folder)


def _names(folder: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(folder) if name.endswith(READ_SUFFIXES))
    except OSError as exc:
        raise ConvertError(f"cannot be listed ({exc.strerror or exc})", folder) from None
