"""Chat templates are rendered for the keep set under a time and size budget, with a warning when it stops.

The rendering runs inside the export, so a template whose loops would run for hours, or whose
strings grow to gigabytes, must stop within seconds and let the export finish; an ordinary
template must render exactly as jinja2's own sandbox renders it, so its scaffold tokens are kept.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from converter.tokenizer.chat_template import TIME_LIMIT_S, rendered_scaffolds
from converter.tokenizer.source import ChatTemplate
from tests.support.reference_prune import random_plan
from tests.support.refusal import run_cli
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.tiny_tokenizers import CHAT_TEMPLATE

SLACK_S = 10.0  # a busy two-core machine; the limit itself is TIME_LIMIT_S
NESTED_HUGE_RANGES = "{% for i in range(10**9) %}{% for j in range(10**9) %}x{% endfor %}{% endfor %}"
NESTED_LONG_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HOSTILE = {
    "nested-huge-ranges": (NESTED_HUGE_RANGES, "items on range()"),
    "nested-long-loops": (NESTED_LONG_LOOPS, "time limit"),
    "nested-loops-over-a-string": ("{% set s = 'ab' * 50000 %}{% for a in s %}{% for b in s %}{% for c in s %}"
                                   "{% endfor %}{% endfor %}{% endfor %}", "time limit"),
    "string-product": ("{{ 'x' * 10**9 }}", "size limit"),
    "doubling-concatenation": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                               "{% endfor %}{{ ns.s }}", "size limit"),
    "doubling-join": ("{% set ns = namespace(s=['x']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s|join }}", "size limit"),
    "huge-power": ("{{ 7 ** 1000000000 }}", "limit on integers"),
    "long-output": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "output limit"),
}
ORDINARY = {
    "chatml": CHAT_TEMPLATE,
    "llama3-like": (
        "{{ bos_token }}{% set ns = namespace(system='You are helpful.') %}"
        "{% if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content']|trim %}"
        "{% set messages = messages[1:] %}{% endif %}"
        "<|start_header_id|>system<|end_header_id|>\n\n{{ ns.system }}<|eot_id|>"
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content']|trim }}<|eot_id|>"
        "{% if loop.last and add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        "{% endfor %}"),
    "gemma-like": (
        "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
        "else message['role'] %}{{ '<start_of_turn>' ~ role ~ '\n' ~ message['content'] | trim ~ '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
        "{{ '%s|%d' % ('a', 3) }}{{ [1, 2] * 2 }}{{ 'ab' * 3 }}{{ 2 ** 10 }}{% for c in 'xyz' %}{{ loop.index }}"
        "{% if loop.last %}.{% break %}{% endif %}{% endfor %}{% filter upper %}done{% endfilter %}"),
}
ROLES = {"bos_token": "<s>", "eos_token": "</s>"}


def _plain_sandbox(source: str, messages: list[dict[str, str]]) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    return env.from_string(source).render(messages=messages, add_generation_prompt=True, **ROLES)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_stops_within_the_limit_with_one_warning(name: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source, why = HOSTILE[name]
    start = time.monotonic()
    scaffolds = rendered_scaffolds([ChatTemplate(tmp_path / "chat_template.jinja", source)], ROLES)
    assert time.monotonic() - start < TIME_LIMIT_S + SLACK_S
    assert scaffolds == []
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "chat_template.jinja" in err[0] and why in err[0], err


def test_all_templates_share_one_budget_and_each_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    templates = [ChatTemplate(tmp_path / "tokenizer_config.json", NESTED_LONG_LOOPS),
                 ChatTemplate(tmp_path / "chat_template.jinja", NESTED_LONG_LOOPS)]
    start = time.monotonic()
    assert rendered_scaffolds(templates, ROLES) == []
    assert time.monotonic() - start < TIME_LIMIT_S + SLACK_S
    err = capsys.readouterr().err.splitlines()
    assert [("tokenizer_config.json" in line, "chat_template.jinja" in line) for line in err] == [(True, False),
                                                                                                 (False, True)]


def test_a_stopped_rendering_is_not_repeated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that plans many keep sets (fitting a vocabulary budget) waits for a hostile template once."""
    templates = [ChatTemplate(tmp_path / "chat_template.jinja", NESTED_LONG_LOOPS)]
    rendered_scaffolds(templates, ROLES)
    capsys.readouterr()
    start = time.monotonic()
    assert rendered_scaffolds(templates, ROLES) == []
    assert time.monotonic() - start < 1.0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", list(ORDINARY))
def test_ordinary_template_renders_as_jinja_sandbox_does(name: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = ORDINARY[name]
    scaffolds = rendered_scaffolds([ChatTemplate(tmp_path / "tokenizer_config.json", source)], ROLES)
    expected = []
    for messages in ([{"role": "system", "content": ""}, {"role": "user", "content": ""},
                      {"role": "assistant", "content": ""}],
                     [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]):
        try:
            expected.append(_plain_sandbox(source, messages))
        except ValueError:
            continue
    assert scaffolds == expected and scaffolds
    assert capsys.readouterr().err == ""


def _model_with_template(tmp_path: Path, tokenizer_dir: Path, template: str) -> tuple[Path, Path, int]:
    """The tiny model with the byte-level tokenizer, a non-special added token `<tool_call>` spelled out in
    `template` (which replaces the chat template), and a plan that drops 40% of the tokens and `<tool_call>`."""
    folder = tmp_path / "in"
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tool_call = 1 + max([*tokenizer["model"]["vocab"].values(), *(a["id"] for a in tokenizer["added_tokens"])])
    tokenizer["added_tokens"].append({"id": tool_call, "content": "<tool_call>", "single_word": False,
                                      "lstrip": False, "rstrip": False, "normalized": False, "special": False})
    save_tiny_model(build_tiny_model("llama", vocab_size=tool_call + 1), folder)
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, folder / f.name)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}), encoding="utf-8")
    plan = random_plan(tool_call + 1, 160, 2, int(tool_call * 0.6), 64, seed=3)
    plan = plan.with_tokens([i for i in plan.kept_token_ids if i != tool_call])
    return folder, plan.save(tmp_path / "plan.json"), tool_call


@pytest.mark.parametrize("loops", [NESTED_HUGE_RANGES, NESTED_LONG_LOOPS], ids=["huge-ranges", "long-loops"])
def test_export_with_a_hostile_template_finishes_with_a_warning(loops: str, byte_level_tokenizer_dir: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The one-shot CLI with a plan that drops tokens: the warning names the file, the spelled-out token stays."""
    model, plan, tool_call = _model_with_template(tmp_path, byte_level_tokenizer_dir, "<tool_call>" + loops)
    start = time.monotonic()
    code, err = run_cli([str(model), str(tmp_path / "out"), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 0, err
    assert time.monotonic() - start < 30
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tokenizer_config.json" in warnings[0], err
    kept = json.loads((tmp_path / "out" / "prune_plan.json").read_text())["kept_token_ids"]
    assert tool_call in kept
    assert "<tool_call>" in Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).get_vocab()


def test_export_with_an_ordinary_template_keeps_its_scaffold_tokens(byte_level_tokenizer_dir: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model, plan, tool_call = _model_with_template(tmp_path, byte_level_tokenizer_dir, "<tool_call>" + CHAT_TEMPLATE)
    code, err = run_cli([str(model), str(tmp_path / "out"), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 0 and "warning" not in err, err
    kept = set(json.loads((tmp_path / "out" / "prune_plan.json").read_text())["kept_token_ids"])
    source = Tokenizer.from_file(str(model / "tokenizer.json"))
    scaffold = "<tool_call><|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    assert tool_call in kept and set(source.encode(scaffold).ids) <= kept
