"""verify as one library call: detect OUT, build the reference, load each runtime, run the checks.

Order matters for memory and for early errors: every input problem (OUT, --text, IN, the plan)
raises ConvertError before a model is loaded; models are loaded one side at a time and dropped
when their checks are done, so peak memory is about two copies of the pruned model in float32
(plus the dense source for bits per byte); the general-capability row runs last, after OUT's
runtime is dropped, and holds one model at a time.
"""
from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError
from converter.verify.checks import Check, logit_parity, nll_bits, skip, tokenizer_parity, vocab_check
from converter.verify.detect import Output, detect
from converter.verify.probe import PROMPT
from converter.verify.reference import PLAN_NAME, Reference, pruned_reference
from converter.verify.retention_check import (DEFAULT_NEW_TOKENS, DEFAULT_PROMPTS, NAME, check_counts,
                                              measure_retention, retention_row)
from converter.verify.tolerance import tolerance_for

MAX_WINDOW = 512
NEEDS_REFERENCE = "needs --reference IN (the source model folder OUT was exported from)"


@dataclass(frozen=True)
class Verdict:
    """What was verified and every check's row."""

    output: Output
    reference: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return not any(c.status == "FAIL" for c in self.checks)


def verify(out_dir: Path, source: Path | None = None, text_file: Path | None = None, threads: int = 1,
           retention_prompts: int = DEFAULT_PROMPTS, retention_tokens: int = DEFAULT_NEW_TOKENS) -> Verdict:
    """Run every check that OUT (and IN, and the text) make possible.

    `retention_prompts` held-out probe prompts (0: none) are answered by IN in up to
    `retention_tokens` new tokens for the general-capability row.
    """
    check_counts(retention_prompts, retention_tokens)
    output = detect(out_dir)
    text = _read_text(text_file) if text_file is not None else None
    if source is not None and not source.is_dir():
        raise ConvertError("is not a folder; --reference takes the source model folder", source)
    checks: list[Check] = []
    with pruned_reference(output, source) as reference:
        ref_tok = _reference_tokenizer(reference)
        checks.append(_tokenizer_check(output, reference, ref_tok))
        subject = _subject_model(output, _window(output.folder), threads)
        ref_model = _reference_model(reference, threads)
        expected = {"config.json": _config(output.folder).get("vocab_size")}
        if ref_model is not None:
            expected["reference"] = ref_model.vocab_size
        checks.append(vocab_check(subject.name, subject.vocab_size,
                                  {k: int(v) for k, v in expected.items() if isinstance(v, int)}))
        checks.append(_logit_check(output, subject, ref_model, ref_tok, reference))
        del ref_model
        gc.collect()
        if text is not None:
            checks.extend(_bpb_checks(output, subject, text, source, threads))
        del subject
        gc.collect()
        checks.append(_retention_check(output, reference, ref_tok, retention_prompts, retention_tokens, threads))
    return Verdict(output, reference.description, tuple(checks))


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConvertError("does not exist; --text takes a UTF-8 text file", path) from None
    except IsADirectoryError:
        raise ConvertError("is a folder; --text takes one UTF-8 text file", path) from None
    except UnicodeDecodeError as exc:
        raise ConvertError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except OSError as exc:
        raise ConvertError(f"cannot be read ({exc.strerror})", path) from None
    if not text.strip():
        raise ConvertError("is empty; --text needs some text to score", path)
    return text


def _config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _window(folder: Path) -> int:
    config = _config(folder)
    positions = config.get("max_position_embeddings")
    # LongRoPE takes its long factors past the original context, llama.cpp whenever its context is longer
    # than that, transformers only for calls that reach it: windows stay inside, where both use the short ones.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("longrope", "su"):
        original = rope.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
        if isinstance(original, int) and isinstance(positions, int):
            positions = min(positions, original)
    return min(MAX_WINDOW, positions) if isinstance(positions, int) and positions > 8 else MAX_WINDOW


def _reference_tokenizer(reference: Reference) -> Any:
    from converter.verify.runtime_hf import HfTokenizer

    folder = reference.folder
    if folder is None or not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        return None
    return HfTokenizer(folder)


def _tokenizer_check(output: Output, reference: Reference, ref_tok: Any) -> Check:
    if ref_tok is None:
        where = "the source" if reference.has_model else "OUT"
        return skip("tokenizer parity", f"no tokenizer to compare with: {where} carries no tokenizer files"
                    + ("" if reference.has_model else f"; {NEEDS_REFERENCE}"))
    if output.format == "gguf":
        from converter.verify.runtime_gguf import LlamaCppTokenizer

        subject: Any = LlamaCppTokenizer(output.model)
    else:
        path = output.folder / "tokenizer.json"
        if not path.is_file():
            return Check("tokenizer parity", "FAIL", f"{path.name} is missing from OUT", "", "identical ids")
        from converter.verify.runtime_hf import JsonTokenizer

        subject = JsonTokenizer(path)
    check = tokenizer_parity(subject, ref_tok)
    if not reference.has_model and check.status == "PASS":
        return Check(check.name, check.status, f"{check.result} of OUT (self-consistency)", check.numbers,
                     check.tolerance, "the tokenizer was compared with OUT's own tokenizer files only; comparing it "
                     "with the source's needs --reference IN")
    return check


def _subject_model(output: Output, window: int, threads: int) -> Any:
    if output.format == "gguf":
        from converter.verify.runtime_gguf import LlamaCppModel

        return LlamaCppModel(output.model, window, threads)
    if output.format == "onnx":
        from converter.verify.runtime_onnx import OnnxModel

        return OnnxModel(output.model, threads)
    from converter.verify.runtime_hf import HfModel

    return HfModel(output.folder, threads)


def _reference_model(reference: Reference, threads: int) -> Any:
    if not reference.has_model or reference.folder is None:
        return None
    from converter.verify.runtime_hf import HfModel

    return HfModel(reference.folder, threads)


def _logit_check(output: Output, subject: Any, ref_model: Any, ref_tok: Any, reference: Reference) -> Check:
    if ref_model is None:
        what = "OUT is its own reference" if output.format == "hf" else "OUT holds no Hugging Face weights"
        return skip("logit parity", f"{what}; {NEEDS_REFERENCE}")
    if ref_tok is None:
        return skip("logit parity", "the source has no tokenizer files to encode the prompt with")
    ids = _prompt_ids(ref_tok, reference.folder)
    return logit_parity(subject, ref_model, ids, tolerance_for(output.format, output.outtype, output.architecture))


def _prompt_ids(tokenizer: Any, folder: Path | None) -> list[int]:
    """The prompt as the reference tokenizer encodes it, starting with the model's start token."""
    from converter.score.bpb import start_id

    hf = tokenizer.tokenizer
    first = start_id(hf, _config(folder) if folder is not None else {})
    ids = list(hf(PROMPT, add_special_tokens=True)["input_ids"])
    return ids if first is None else [first, *ids]


def _bits_per_byte(model: Any, folder: Path, text: str, window: int) -> tuple[float, int]:
    from converter.score.bpb import eval_windows, start_id, text_bytes
    from converter.verify.runtime_hf import HfTokenizer

    tokenizer = HfTokenizer(folder).tokenizer
    windows = eval_windows(tokenizer, [text], start_id(tokenizer, _config(folder)), window)
    tokens = sum(int(w.size) - 1 for w in windows)
    return nll_bits(model, windows) / text_bytes([text]), tokens


def _bpb_checks(output: Output, subject: Any, text: str, source: Path | None, threads: int) -> list[Check]:
    window = _window(output.folder)
    if not (output.folder / "tokenizer.json").is_file() and not (output.folder / "tokenizer.model").is_file():
        return [skip("bits per byte", "OUT carries no tokenizer files to split the text with")]
    bpb, tokens = _bits_per_byte(subject, output.folder, text, window)
    rows = [Check("bits per byte", "INFO", f"OUT in {subject.name}", f"{bpb:.4f} bits/byte over {tokens} tokens")]
    if source is None:
        rows.append(skip("bits per byte, dense", f"the dense source's score {NEEDS_REFERENCE}"))
        return rows
    from converter.verify.runtime_hf import HfModel

    dense = HfModel(source, threads)
    dense_bpb, dense_tokens = _bits_per_byte(dense, source, text, _window(source))
    change = 100.0 * (bpb / dense_bpb - 1.0) if dense_bpb > 0 else float(np.nan)
    rows.append(Check("bits per byte, dense", "INFO", f"dense IN in transformers; OUT is {change:+.1f}%",
                      f"{dense_bpb:.4f} bits/byte over {dense_tokens} tokens"))
    return rows


def _retention_check(output: Output, reference: Reference, ref_tok: Any, prompts: int, new_tokens: int,
                     threads: int) -> Check:
    if reference.source is None or reference.folder is None or not reference.has_model:
        return skip(NAME, f"the dense model's answers to everyday prompts {NEEDS_REFERENCE}")
    if prompts == 0:
        return skip(NAME, "turned off (--retention-prompts 0)")
    if ref_tok is None:
        return skip(NAME, "the source has no tokenizer files to ask the everyday prompts with")
    from converter.plan import PrunePlan

    kept = PrunePlan.load(output.folder / PLAN_NAME).kept_token_ids
    return retention_row(measure_retention(reference.source, reference.folder, kept, prompts, new_tokens, threads))
