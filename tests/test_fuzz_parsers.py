"""Fuzz the parsers of untrusted input: only ConvertError may escape, and nothing may hang.

Hypothesis generates safetensors headers (random bytes, and structured headers with lying
fields), index files, config.json contents and plans. The example count is FUZZ_EXAMPLES
(default 1,000 per parser so CI stays fast; `FUZZ_EXAMPLES=10000` for a long run).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter.arch import resolve_arch
from converter.errors import ConvertError
from converter.io.checkpoint import Checkpoint
from converter.io.header import read_header
from converter.plan import PrunePlan
from tests.support.tiny_models import tiny_config

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), database=None)

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(
    max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
dtypes = st.sampled_from(["F32", "BF16", "F16", "I8", "U8", "F64", "F42", "", "bf16"])
entry = st.fixed_dictionaries({
    "dtype": dtypes,
    "shape": st.lists(st.integers(-3, 2**40), max_size=4) | json_values,
    "data_offsets": st.lists(st.integers(-10, 2**40), min_size=0, max_size=3) | json_values,
})


def _expect_only_convert_error(fn, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except ConvertError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(blob=st.binary(max_size=200))
def test_random_bytes_as_safetensors(tmp_path_factory, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.getbasetemp() / "fuzz-random.safetensors"
    path.write_bytes(blob)
    _expect_only_convert_error(read_header, path)


@FUZZ
@given(header=st.dictionaries(st.text(min_size=1, max_size=6), entry | json_values, max_size=4),
       data=st.binary(max_size=64), declared_extra=st.integers(-16, 16))
def test_structured_lying_headers(tmp_path_factory, header: dict, data: bytes,  # type: ignore[no-untyped-def]
                                  declared_extra: int) -> None:
    blob = json.dumps(header).encode()
    n = max(0, len(blob) + declared_extra)
    path = tmp_path_factory.getbasetemp() / "fuzz-header.safetensors"
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    _expect_only_convert_error(read_header, path)


@FUZZ
@given(index=json_values | st.fixed_dictionaries({"weight_map": st.dictionaries(
    st.text(max_size=8), st.sampled_from(["model.safetensors", "../x.safetensors", "/abs.safetensors", "a.bin",
                                          "missing.safetensors", "", "sub/../model.safetensors"]) | json_values,
    max_size=4)}))
def test_index_files(tmp_path_factory, index: object) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.getbasetemp() / "fuzz-index"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _expect_only_convert_error(Checkpoint.open, folder)


BASE_CONFIG = tiny_config("llama").to_dict()


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(BASE_CONFIG) + ["architectures", "head_dim"]), json_values,
                               max_size=4))
def test_config_values(changes: dict) -> None:
    config = {**BASE_CONFIG, "architectures": ["LlamaForCausalLM"], **changes}
    _expect_only_convert_error(resolve_arch, config, Path("config.json"))


@FUZZ
@given(plan=json_values | st.fixed_dictionaries({
    "format_version": st.sampled_from([1, 2, "1"]),
    "kept_token_ids": st.lists(st.integers(-5, 2100), max_size=20) | json_values,
    "kept_ffn_channels": st.lists(st.lists(st.integers(-5, 200), max_size=6), max_size=3) | json_values,
    "source_fingerprint": st.none() | st.text(max_size=10) | json_values,
}))
def test_plans(plan: object) -> None:
    spec = resolve_arch({**BASE_CONFIG, "architectures": ["LlamaForCausalLM"]}, Path("config.json"))

    def parse_and_validate() -> None:
        PrunePlan.from_json(plan).validate(spec, None)

    _expect_only_convert_error(parse_and_validate)
