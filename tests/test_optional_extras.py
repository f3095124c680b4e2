"""`pip install compact-convert` without extras: hf and gguf work, onnx says which extra to install.

The CLI runs in a subprocess whose imports of onnx, onnxruntime and onnxscript fail as they do
when the packages are not installed (a meta-path finder's loader raises ModuleNotFoundError naming
the module), so any import of them on the hf or gguf path, or by verify of a GGUF, fails the test.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

BLOCKED = ("onnx", "onnxruntime", "onnxscript")
# Importing a blocked module raises ModuleNotFoundError naming it; a probe (importlib.util.find_spec, as
# torch's dynamo makes for every module it knows) gets a spec without an origin, not an exception.
WITHOUT_ONNX = f"""
import importlib.machinery
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)

    def exec_module(self, module):
        raise AssertionError("unreachable")

sys.meta_path.insert(0, NotInstalled())
from converter.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
if leaked:
    print("imported", leaked, file=sys.stderr)
    code = 99
sys.exit(code)
"""
MESSAGE = ("format 'onnx' needs the Python package 'onnx'; install it with: pip install 'compact-convert[onnx]'")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_ONNX, *args], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def model_and_plan(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> tuple[Path, Path]:
    root = module_tmp.mktemp("extras")
    folder = save_tiny_model(build_tiny_model("llama"), root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    return folder, random_plan(2000, 160, 2, 1200, 96, seed=2).save(root / "plan.json")


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_hf_and_gguf_need_no_onnx(fmt: str, model_and_plan: tuple[Path, Path], tmp_path: Path) -> None:
    model, plan = model_and_plan
    out = tmp_path / "out"
    done = _run(str(model), str(out), "--plan", str(plan), "--format", fmt, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert (out / "prune_plan.json").is_file()
    if fmt == "gguf" and importlib.util.find_spec("llama_cpp") is not None:
        checked = _run("verify", str(out), "--reference", str(model))
        assert checked.returncode == 0, checked.stderr + checked.stdout


def test_onnx_without_the_extra_names_it(model_and_plan: tuple[Path, Path], tmp_path: Path) -> None:
    model, plan = model_and_plan
    out = tmp_path / "out"
    done = _run(str(model), str(out), "--plan", str(plan), "--format", "onnx", "--no-progress")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"compact-convert: error: {MESSAGE}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
