"""Models in a Hugging Face cache convert exactly as a plain copy does; links anywhere else are refused.

A snapshot, `models--ORG--NAME/snapshots/<revision>/`, holds only relative links into
`../../blobs/<sha256>`. Converting it through the CLI must write the same bytes as converting a
plain copy of the same files (the plan's fingerprint, made on the copy, must match too). The
runs are made from inside each tree with IN spelled as the revision's folder name, so the
command line and the model name the outputs record are the same. Links out of the repository
folder, absolute links, loops, and cache-looking trees that are no `models--*` repository are
refused like any other link out of a model folder: exit 2, one line naming the file, nothing written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from converter.plan import PrunePlan
from converter.source import open_source
from tests.support.cli_process import contents, staging_dirs
from tests.support.reference_prune import random_plan
from tests.support.refusal import Breaker, Case, assert_refused, run_cli
from tests.support.smollm2_plans import smollm2_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tools.smollm2_hf import cached_smollm2_hf

REVISION = "0123456789abcdef0123456789abcdef01234567"
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def hf_cache(plain: Path, root: Path, repo: str = "models--x--y", revision: str = REVISION,
             blobs: str = "blobs") -> Path:
    """Store `plain`'s files as huggingface_hub does: blobs named by sha256, the snapshot as relative links."""
    repo_dir = root / repo
    (repo_dir / blobs).mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    for path in sorted(plain.rglob("*")):
        if not path.is_file():
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        blob = repo_dir / blobs / digest.hexdigest()
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(plain)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def _vocab_size(tokenizer_dir: Path) -> int:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return 1 + max([*data["model"]["vocab"].values(), *(a["id"] for a in data["added_tokens"])])


@pytest.fixture()
def tiny(tmp_path: Path, byte_level_tokenizer_dir: Path) -> tuple[Path, Path, Path]:
    """(plain folder named REVISION, its cache snapshot, a token + FFN plan fingerprinted on the plain folder)."""
    model = build_tiny_model("llama", vocab_size=_vocab_size(byte_level_tokenizer_dir))
    plain = save_tiny_model(model, tmp_path / "plain" / REVISION, max_shard_size="200KB",
                            tokenizer_dir=byte_level_tokenizer_dir)
    (plain / "chat_template.jinja").write_text(TEMPLATE)
    (plain / "additional_chat_templates").mkdir()
    (plain / "additional_chat_templates" / "tool.jinja").write_text(TEMPLATE.replace("role", "name"))
    snapshot = hf_cache(plain, tmp_path / "cache")
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 600, 96, seed=3)
    fingerprint = open_source(plain).checkpoint.fingerprint()
    plan = PrunePlan(plan.kept_token_ids, plan.kept_ffn_channels, fingerprint, plan.metadata)
    return plain, snapshot, plan.save(tmp_path / "plan.json")


def _convert(folder: Path, out: Path, plan: Path, capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch, *extra: str) -> dict[str, str]:
    """Convert from inside `folder`'s parent, IN spelled as its name; the sha256 of every file written."""
    monkeypatch.chdir(folder.parent)
    code, err = run_cli([folder.name, str(out), "--plan", str(plan), "--no-progress", *extra], capsys)
    assert code == 0, err
    return contents(out)


def _assert_same_conversion(plain: Path, snapshot: Path, plan: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                            *extra: str) -> dict[str, str]:
    assert open_source(snapshot).checkpoint.fingerprint() == open_source(plain).checkpoint.fingerprint()
    from_plain = _convert(plain, tmp_path / "out-plain", plan, capsys, monkeypatch, *extra)
    from_cache = _convert(snapshot, tmp_path / "out-cache", plan, capsys, monkeypatch, *extra)
    assert from_cache == from_plain
    assert not staging_dirs(tmp_path)
    return from_cache


def test_tiny_snapshot_converts_like_a_plain_copy_hf(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plain, snapshot, plan = tiny
    assert all(p.is_symlink() for p in snapshot.rglob("*") if not p.is_dir())
    written = _assert_same_conversion(plain, snapshot, plan, tmp_path, capsys, monkeypatch)
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "additional_chat_templates/tool.jinja",
            "prune_plan.json"} <= set(written)
    assert not any((tmp_path / "out-cache" / name).is_symlink() for name in written)


def test_tiny_snapshot_converts_like_a_plain_copy_gguf(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    plain, snapshot, plan = tiny
    written = _assert_same_conversion(plain, snapshot, plan, tmp_path, capsys, monkeypatch, "--format", "gguf")
    assert any(name.endswith(".gguf") for name in written)


def test_smollm2_snapshot_converts_like_a_plain_copy(fixtures_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plain = cached_smollm2_hf(fixtures_root)
    snapshot = hf_cache(plain, tmp_path / "cache", repo="models--HuggingFaceTB--SmolLM2-135M-Instruct",
                        revision=plain.name)
    source = open_source(plain)
    plan = smollm2_plan(source)
    plan = PrunePlan(plan.kept_token_ids, plan.kept_ffn_channels, source.checkpoint.fingerprint(), plan.metadata)
    written = _assert_same_conversion(plain, snapshot, plan.save(tmp_path / "plan.json"), tmp_path, capsys,
                                      monkeypatch)
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(written)


def _point(name: str, target: str) -> Breaker:
    """Point the snapshot entry `name` (FIRST_SHARD: the first shard) at a copy of its file at `target`."""
    def brk(snapshot: Path, plan: Path) -> None:
        entry = sorted(snapshot.glob("model-*.safetensors"))[0].name if name == FIRST_SHARD else name
        link = snapshot / entry
        where = link.parent / target.replace(FIRST_SHARD, entry)  # an absolute target stays absolute
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(link, where)
        link.unlink()
        link.symlink_to(target.replace(FIRST_SHARD, entry))
    return brk


def _absolute_link(snapshot: Path, plan: Path) -> None:
    _point("tokenizer.json", str(snapshot.parents[3] / "elsewhere" / "tokenizer.json"))(snapshot, plan)


def _loop(snapshot: Path, plan: Path) -> None:
    """chat_template.jinja -> ../../blobs/loop -> back to chat_template.jinja, all inside the repository."""
    link = snapshot / "chat_template.jinja"
    link.unlink()
    link.symlink_to("../../blobs/loop")
    (snapshot.parents[1] / "blobs" / "loop").symlink_to(f"../snapshots/{snapshot.name}/chat_template.jinja")


FIRST_SHARD = "FIRST_SHARD"
REFUSALS = [
    Case("link-out-of-the-repository", _point(FIRST_SHARD, f"../../../../elsewhere/{FIRST_SHARD}"),
         "outside the model folder", "model-00001-of-"),
    Case("link-into-another-repository", _point("tokenizer.json", "../../../models--evil--z/blobs/0a1b"),
         "outside the model folder", "tokenizer.json"),
    Case("absolute-link-elsewhere", _absolute_link, "outside the model folder", "tokenizer.json"),
    Case("link-loop", _loop, "symlink loop", "chat_template.jinja"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
def test_links_out_of_the_repository_are_refused(case: Case, tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, snapshot, plan = tiny
    assert_refused(case, snapshot, plan, tmp_path, capsys)


LOOKALIKES = [("not-named-models", {"repo": "x--y"}), ("no-blobs-folder", {"blobs": "objects"}),
              ("bare-prefix", {"repo": "models--"})]


@pytest.mark.parametrize("kwargs", [k for _, k in LOOKALIKES], ids=[i for i, _ in LOOKALIKES])
def test_a_tree_that_only_looks_like_a_cache_is_refused(kwargs: dict[str, str], tiny: tuple[Path, Path, Path],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain, _, plan = tiny
    lookalike = hf_cache(plain, tmp_path / "lookalike", **kwargs)
    # The first file the opening checks (in name order) is the one named.
    case = Case("lookalike", lambda m, p: None, "outside the model folder", f"{REVISION}/chat_template.jinja")
    assert_refused(case, lookalike, plan, tmp_path, capsys)
