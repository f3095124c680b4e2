"""Gemma 3 multimodal checkpoints (Gemma3ForConditionalGeneration): the language model pruned, the rest kept.

A tiny Gemma3ForConditionalGeneration (Gemma 3 text model with q/k norms, sandwich norms, a sliding and a
full layer; a one-layer SigLIP tower and the projector) with a Gemma-style SentencePiece tokenizer that
carries the image tokens as added special tokens, pruned by a random vocabulary + FFN plan that drops
the image tokens (the keep-set rules must put them back). HF: the vision tower and projector are the
input's bytes, the text logits and an image+text forward equal the in-memory pruned reference, and
the configs name the image tokens by their new ids. GGUF f32: llama.cpp runs the text model with
transformers' logits within the Gemma tolerance and the same greedy continuation. Scoring loads the
text model from the multimodal checkpoint. ONNX fp32 writes the text model (a text-only config.json,
genai type gemma3_text, one stderr note): cached decoding, greedy and onnxruntime-genai equal the reference.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import (AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig,
                          SiglipVisionConfig)

from converter.arch.families import FAMILIES
from converter.arch.spec import resolve_arch
from converter.pipeline import export
from converter.plan import PrunePlan
from converter.score.corpus import open_corpus
from converter.score.scorer import score
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.gguf_runtime import (hf_greedy, leading_agreement, llama_greedy, llama_logits, load_llama,
                                        the_gguf, tokenize, train_gemma_style_spm)
from tests.support.onnx_runner import OnnxDecoder, cached_decode_error, genai_greedy, greedy
from tests.support.reference_prune import random_plan
from tests.support.score_fixtures import ALL_WINDOWS, write_corpus
from tests.support.scratch import ModuleTmp

IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
OTHER_TOWERS = ("vision_tower.", "multi_modal_projector.")
PROMPT = "def area(radius):\n    return 3.14159 * radius ** 2  # the circle's area, in square units"
STEPS = 32
TOLERANCE = 2e-3  # the Gemma families' f32 tolerance in tests/test_gguf_tiny.py
MM_TOKENS = 4
ONNX_STEPS = 16


def _tiny_multimodal(vocab: int, ids: dict[str, int]) -> Gemma3ForConditionalGeneration:
    text = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                            sliding_window=8, query_pre_attn_scalar=16, bos_token_id=2, eos_token_id=1,
                            pad_token_id=0, layer_types=["sliding_attention", "full_attention"])
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=MM_TOKENS,
                          image_token_index=ids["<image_soft_token>"], boi_token_index=ids["<start_of_image>"],
                          eoi_token_index=ids["<end_of_image>"])
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def exported(module_tmp: ModuleTmp) -> dict[str, Path]:
    root = module_tmp.mktemp("gemma3-mm")
    src = train_gemma_style_spm(root / "in", 1500)
    tok = AutoTokenizer.from_pretrained(src)
    tok.add_tokens(IMAGE_TOKENS, special_tokens=True)
    tok.save_pretrained(src)
    ids = {t: tok.convert_tokens_to_ids(t) for t in IMAGE_TOKENS}
    model = _tiny_multimodal(len(tok), ids)
    model.save_pretrained(src)
    plan = random_plan(len(tok), 160, 2, int(len(tok) * 0.6), 96, seed=1)
    plan = PrunePlan(tuple(i for i in plan.kept_token_ids if i not in ids.values()), plan.kept_ffn_channels,
                     None, plan.metadata)
    export(open_source(src), plan, root / "hf", "hf", ExportOptions(progress=False))
    plan.save(root / "plan.json")
    return {"in": src, "hf": root / "hf", "plan": root / "plan.json", "root": root}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _reference(folder: Path, kept: list[int], channels: tuple[tuple[int, ...], ...]
               ) -> Gemma3ForConditionalGeneration:
    """The source model pruned in memory by plain indexing of its loaded modules."""
    model = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.tensor(kept)
    language = model.model.language_model
    with torch.no_grad():
        language.embed_tokens.weight = torch.nn.Parameter(language.embed_tokens.weight[tokens].clone())
        language.embed_tokens.num_embeddings = len(kept)
        model.lm_head.weight = language.embed_tokens.weight
        for layer, keep in zip(language.layers, channels):
            index = torch.tensor(keep)
            mlp = layer.mlp
            mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight[index].clone())
            mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[index].clone())
            mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, index].clone())
    return model


def test_hf_keeps_towers_and_matches_reference(exported: dict[str, Path]) -> None:
    src, out = exported["in"], exported["hf"]
    plan = json.loads((out / "prune_plan.json").read_text())
    kept = plan["kept_token_ids"]
    source_config = json.loads((src / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == len(kept) < source_config["text_config"]["vocab_size"]
    assert config["text_config"]["intermediate_size"] == 96
    assert config["vision_config"] == source_config["vision_config"]

    old_tok, new_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    for token, key in zip(IMAGE_TOKENS, ("boi_token_index", "eoi_token_index", "image_token_index")):
        old_id, new_id = old_tok.convert_tokens_to_ids(token), new_tok.convert_tokens_to_ids(token)
        assert old_id in kept and kept.index(old_id) == new_id == config[key], token
        assert new_tok.decode([new_id]) == token

    before, after = _tensors(src), _tensors(out)
    towers = sorted(k for k in before if k.startswith(OTHER_TOWERS))
    assert towers and sorted(k for k in after if k.startswith(OTHER_TOWERS)) == towers
    for name in towers:
        assert after[name].dtype == before[name].dtype and torch.equal(after[name].view(torch.uint8),
                                                                        before[name].view(torch.uint8)), name

    model = Gemma3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    reference = _reference(src, kept, tuple(tuple(c) for c in plan["kept_ffn_channels"]))
    assert model.config.image_token_id == config["image_token_index"] != reference.config.image_token_id
    reference.config.image_token_id = config["image_token_index"]  # the source's id, renumbered by hand
    ids = new_tok(PROMPT, return_tensors="pt").input_ids
    image = config["image_token_index"]
    with_image = torch.cat([ids[:, :3], torch.tensor([[config["boi_token_index"], *[image] * MM_TOKENS,
                                                       config["eoi_token_index"]]]), ids[:, 3:]], dim=1)
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, expected = model(input_ids=ids).logits, reference(input_ids=ids).logits
        got_image = model(input_ids=with_image, pixel_values=pixels).logits
        expected_image = reference(input_ids=with_image, pixel_values=pixels).logits
        text_only = model(input_ids=with_image).logits
    assert got.shape[-1] == len(kept)
    assert torch.equal(got, expected)
    assert torch.equal(got_image, expected_image)
    assert not torch.equal(got_image, text_only)  # the image reached the language model


def test_gguf_text_model_matches_transformers(exported: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    out = exported["hf"]
    gguf = the_gguf(export(open_source(exported["in"]), PrunePlan.load(exported["plan"]), exported["root"] / "gguf",
                           "gguf", ExportOptions(outtype="f32", progress=False)))
    notes = [line for line in capfd.readouterr().err.splitlines() if "text model only" in line]
    assert len(notes) == 1 and "vision_tower" in notes[0] and "multi_modal_projector" in notes[0], notes
    tok = AutoTokenizer.from_pretrained(out)
    model = Gemma3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    llm = load_llama(gguf)
    assert llm.n_vocab() == model.config.text_config.vocab_size
    assert llm.metadata["general.architecture"] == "gemma3"
    assert not any(k.startswith("clip.") for k in llm.metadata)
    text = PROMPT + " <start_of_image><image_soft_token><end_of_image>"
    assert tokenize(llm, text) == tok(text, add_special_tokens=False).input_ids

    prompt = tok.encode(PROMPT, add_special_tokens=True)
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0].numpy()
    got = llama_logits(llm, prompt)
    relative = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert relative < TOLERANCE, relative
    reference = hf_greedy(model, prompt, STEPS)
    generated = llama_greedy(llm, prompt, STEPS)
    assert generated == reference.tokens, (f"greedy differs after {leading_agreement(generated, reference.tokens)} "
                                           f"tokens; smallest transformers top-2 margin {reference.min_margin:.3g}")
    print(f"\n[gemma3 multimodal] GGUF f32 max|dlogit|/max|logit| = {relative:.2e}, greedy {STEPS}/{STEPS}")


def test_scoring_reads_the_text_model(exported: dict[str, Path]) -> None:
    src = exported["in"]
    corpus = write_corpus(exported["root"] / "calib.txt", 10, 3)
    scores = score(open_source(src), open_corpus([corpus]), replace(ALL_WINDOWS, calib_tokens=1024,
                                                                    heldout_tokens=256))
    config = json.loads((src / "config.json").read_text())["text_config"]
    assert scores.layers == config["num_hidden_layers"] and scores.act2.shape[-1] == config["intermediate_size"]
    assert np.isfinite(scores.act2).all() and (scores.act2 > 0).all()
    assert scores.counts.shape == (config["vocab_size"],) and scores.counts.sum() == scores.tokens_counted > 0


def test_sparse_release_config_takes_transformers_defaults() -> None:
    """The releases' config.json names only a few text keys; the rest are Gemma3TextConfig's defaults."""
    family = FAMILIES["gemma3_vision"]
    text = Gemma3TextConfig()
    rope = text.rope_parameters
    for key, value in family.text_defaults:
        expected = {"rope_theta": rope["full_attention"]["rope_theta"],
                    "rope_local_base_freq": rope["sliding_attention"]["rope_theta"]}.get(key, getattr(text, key, None))
        assert value == expected, key
    release = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
               "image_token_index": 262144, "vision_config": {"hidden_size": 1152},
               "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                               "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                               "sliding_window": 1024}}
    spec = resolve_arch(release, Path("config.json"))
    assert spec.family_record is family and spec.model_type == "gemma3"
    assert (spec.dims.vocab, spec.dims.heads, spec.dims.kv_heads, spec.dims.head_dim) == (262208, 8, 4, 256)
    assert spec.config["sliding_window"] == 1024 and spec.config["image_token_index"] == 262144
    assert spec.slot("language_model.model.layers.33.mlp.down_proj.weight") is not None
    assert spec.passes_through("vision_tower.vision_model.post_layernorm.weight")
    assert not spec.passes_through("language_model.model.norm.weight")


def test_onnx_text_model_matches_reference(exported: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    """ONNX fp32 holds the text model: cached decoding, greedy and onnxruntime-genai equal the pruned reference."""
    out = exported["root"] / "onnx"
    export(open_source(exported["in"]), PrunePlan.load(exported["plan"]), out, "onnx",
           ExportOptions(outtype="fp32", progress=False))
    notes = [line for line in capfd.readouterr().err.splitlines() if "text model only" in line]
    assert len(notes) == 1 and "vision_tower" in notes[0] and "multi_modal_projector" in notes[0], notes
    plan = json.loads((out / "prune_plan.json").read_text())
    kept = plan["kept_token_ids"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["vocab_size"] == len(kept) and config["intermediate_size"] == 96 and "vision_config" not in config
    assert json.loads((out / "genai_config.json").read_text())["model"]["type"] == "gemma3_text"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(PROMPT).input_ids == AutoTokenizer.from_pretrained(exported["hf"])(PROMPT).input_ids

    reference = _reference(exported["in"], kept, tuple(tuple(c) for c in plan["kept_ffn_channels"]))
    reference.config.image_token_id = tok.convert_tokens_to_ids("<image_soft_token>")
    prompt = tok.encode(PROMPT, add_special_tokens=True)
    pad = 5
    ids = np.array([prompt, [0] * pad + prompt[:-pad]])
    mask = np.ones_like(ids)
    mask[1, :pad] = 0
    error = cached_decode_error(out, reference, ids, mask, 6)
    assert error <= 1e-4, error
    expected = hf_greedy(reference, prompt, ONNX_STEPS).tokens
    assert greedy(OnnxDecoder(out), prompt, ONNX_STEPS) == expected
    assert genai_greedy(out, prompt, ONNX_STEPS) == expected
    print(f"\n[gemma3 multimodal] ONNX fp32 max|dlogit|/max|logit| = {error:.2e}, greedy {ONNX_STEPS}/{ONNX_STEPS}")
