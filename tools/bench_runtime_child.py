"""One timed run of one exported model, in a fresh process (tools/bench_runtime.py starts it).

A fresh process per run makes the peak RSS the model's own (VmHWM counts the weights llama.cpp
or onnxruntime mapped and touched, plus the interpreter and the runtime's buffers) and keeps one
run's caches and allocator state out of the next. The prompt is the first N tokens of
tests/data/varied.txt (repeated as needed) as the model's own tokenizer splits it, so every
vocabulary gets the same number of tokens; speed depends on the count, not the text. After a
short warm-up (which touches every weight once), the prompt is processed in one batch and then
tokens are generated greedily one at a time; each step's time includes the argmax over the
vocabulary, as in any real decoder. Each phase is timed twice: wall clock, and the CPU time of
this process (time.process_time). With one thread the CPU time is the compute a dedicated core
would spend, whatever share of the machine the scheduler gives the run; on a shared,
oversubscribed machine that is the number to compare (with several threads it would also count
ggml's spin-waiting). Prints one JSON line.

    python -m tools.bench_runtime_child llama MODEL.gguf --prompt 512 --new 64 --threads 2
    python -m tools.bench_runtime_child onnx FOLDER --prompt 128 --new 64 --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

TEXT = Path(__file__).resolve().parent.parent / "tests" / "data" / "varied.txt"


def peak_rss() -> int:
    """VmHWM of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


class Clock:
    """Wall and process-CPU seconds of one timed section."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _result(prompt: int, pp: Clock, steps: list[Clock]) -> dict[str, float]:
    new = len(steps)
    return {"pp_tok_s": prompt / pp.wall, "pp_tok_s_cpu": prompt / pp.cpu,
            "decode_tok_s": new / sum(s.wall for s in steps), "decode_tok_s_cpu": new / sum(s.cpu for s in steps),
            "decode_ms_median": 1000 * statistics.median(s.wall for s in steps),
            "decode_cpu_ms_median": 1000 * statistics.median(s.cpu for s in steps), "peak_rss": peak_rss()}


def _prompt(encode, n: int) -> list[int]:
    text = TEXT.read_text(encoding="utf-8")
    ids: list[int] = []
    while len(ids) < n:
        ids += encode(text)
    return ids[:n]


def run_llama(path: Path, prompt: int, new: int, threads: int) -> dict[str, float]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=prompt + new + 16, n_batch=prompt, n_ubatch=prompt, n_threads=threads,
                          n_threads_batch=threads, verbose=False, logits_all=False)
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    ids = _prompt(lambda t: llm.tokenize(t.encode("utf-8"), add_bos=False, special=False), prompt)

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    llm.eval(ids[:16])
    llm.eval([int(last_logits().argmax())])
    llm.reset()
    with Clock() as pp:
        llm.eval(ids)
    steps = []
    token = int(last_logits().argmax())
    for _ in range(new):
        with Clock() as clock:
            llm.eval([token])
            token = int(last_logits().argmax())
        steps.append(clock)
    return _result(prompt, pp, steps)


def run_onnx(folder: Path, prompt: int, new: int, threads: int) -> dict[str, float]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = _prompt(lambda t: tokenizer.encode(t, add_special_tokens=False).ids, prompt)
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    kv_type = np.float16 if "float16" in past_inputs[0].type else np.float32

    def step(new_ids: list[int], total: int, past: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        logits, *present = session.run(None, {
            "input_ids": np.array([new_ids], np.int64), "attention_mask": np.ones((1, total), np.int64),
            "position_ids": np.arange(total - len(new_ids), total, dtype=np.int64)[None], **past})
        return int(logits[0, -1].argmax()), dict(zip(past, present))

    def empty() -> dict[str, np.ndarray]:
        return {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), kv_type) for i in past_inputs}

    token, past = step(ids[:16], 16, empty())
    step([token], 17, past)
    with Clock() as pp:
        token, past = step(ids, len(ids), empty())
    steps = []
    for k in range(new):
        with Clock() as clock:
            token, past = step([token], len(ids) + k + 1, past)
        steps.append(clock)
    return _result(prompt, pp, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runtime", choices=["llama", "onnx"])
    p.add_argument("path", type=Path)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    run = run_llama if args.runtime == "llama" else run_onnx
    print(json.dumps(run(args.path, args.prompt, args.new, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
