"""Scoring: stream a corpus once, count every token, then record FFN activations on a sample.

One pass over the corpus encodes documents in batches and counts every token. Documents are
held out (for choosing a split later) or used by a hash of their text, and the activation sample
is the `calib_tokens // seq_len` windows of `seq_len` tokens with the smallest hashes, so what a
document contributes does not depend on the order of files, on how many ranks share the work,
or on which shard it came in. Under torch.distributed each rank reads every `world`-th document;
counts, the sample choice and the activation sums are reduced across ranks, so two ranks give
the sums one rank gives. The counts fix the bucket layout (unless another file's layout is
reused), then the sample runs through the model (whole or layer by layer) with a probe on the
input of every `down_proj` that adds act² into its token's bucket, and the model's next-token
probabilities at every `predict_stride`-th position of each window are summed into predicted
counts (the output projection costs a vocabulary-sized matmul per position, so only a sample).
Before counting, the dense model answers the general probe (converter.score.probe_scoring); the
scores keep those answers, and without --calib the calib answers lead the default corpus.
In a mixture-of-experts model each expert's channels are scored over the tokens routed to it
(converter.score.expert_probe), and a shared expert's as the layer's dense FFN.
"""
from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from converter.errors import ConvertError
from converter.source import Source
from converter.progress import progress_bar
from converter.score.buckets import BucketLayout
from converter.score.corpus import DEFAULT_KEEPS_PYDOC, Corpus, Document
from converter.score.engine import ModelRunner, fits, pick_device
from converter.score.expert_probe import ExpertCollector
from converter.score.expert_record import ExpertSums
from converter.score.matmul_inputs import OUTPUT_NAME, MatmulInputCollector, MatmulSums, expert_entries
from converter.score.probe_scoring import PROBE_ORIGIN, probe_documents, run_probe
from converter.score.scores import Scores, pick_heldout
from converter.score.stage_options import ScoreOptions
from converter.score.tokens import ENCODE_BATCH, encode, load_tokenizer, token_ranking

HASH_MASK = (1 << 63) - 1
GRAM_LIMIT_BYTES = 16 << 30
PREDICT_CHUNK_BYTES = 1 << 28


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") & HASH_MASK


def window_hash(doc: int, index: int) -> int:
    data = doc.to_bytes(8, "little") + index.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & HASH_MASK


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(obj: object) -> list[Any]:
    _, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _all_sum(array: np.ndarray) -> np.ndarray:
    if dist_info()[1] == 1:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


@dataclass
class _Pass:
    """What the counting pass keeps: counts, the smallest-hash windows, held-out candidates."""

    counts: np.ndarray
    windows: list[tuple[int, np.ndarray]]
    heldout: list[tuple[int, str, int]]
    documents: int
    tokens: int


def corpus_documents(corpus: Corpus, extra: Sequence[Document] = ()) -> Iterable[Document]:
    """The documents counted: `extra` (the probe's calib answers, for the default corpus) then the corpus's."""
    if corpus.is_default and extra and not DEFAULT_KEEPS_PYDOC:
        return iter(extra)
    return chain(extra, corpus.documents())


def _batches(documents: Iterable[Document], rank: int, world: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for index, doc in enumerate(documents):
        if index % world != rank:
            continue
        batch.append(doc)
        if len(batch) == ENCODE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def count_pass(source: Source, corpus: Corpus, tokenizer: object, options: ScoreOptions,
               progress: Callable[[int], None] | None = None, extra: Sequence[Document] = ()) -> _Pass:
    """Stream this rank's documents once: counts, sample windows (a bounded heap), held-out docs."""
    rank, world = dist_info()
    vocab = source.spec.dims.vocab
    wanted = 0 if options.counts_only else max(1, options.calib_tokens // options.seq_len)
    state = _Pass(np.zeros(vocab, dtype=np.int64), [], [], 0, 0)
    heap: list[tuple[int, int, int, np.ndarray]] = []
    pushed = 0
    for docs in _batches(corpus_documents(corpus, extra), rank, world):
        rows = encode(tokenizer, [d.text for d in docs], vocab, docs[0].origin)
        for doc, ids in zip(docs, rows):
            h = text_hash(doc.text)
            if h % 100 < options.heldout_percent:
                state.heldout.append((h, doc.text, int(ids.size)))
                continue
            state.counts += np.bincount(ids, minlength=vocab)
            state.documents += 1
            state.tokens += int(ids.size)
            for j, start in enumerate(range(0, ids.size, options.seq_len)):
                if not wanted:
                    break
                key = window_hash(h, j)
                pushed += 1
                if len(heap) < wanted:
                    heapq.heappush(heap, (-key, j, pushed, ids[start:start + options.seq_len]))
                elif key < -heap[0][0]:
                    heapq.heapreplace(heap, (-key, j, pushed, ids[start:start + options.seq_len]))
        if len(state.heldout) > 4 * max(1, options.heldout_tokens // 64):
            state.heldout = list(pick_heldout(state.heldout, options.heldout_tokens))
        if progress is not None:
            progress(len(docs))
    state.windows = [(-k, w) for k, _, _, w in heap]
    return state


def _reduce(state: _Pass, options: ScoreOptions) -> _Pass:
    """Combine the ranks' passes: summed counts, the globally smallest-hash windows and held-out docs."""
    wanted = 0 if options.counts_only else max(1, options.calib_tokens // options.seq_len)
    gathered = _gather([k for k, _ in state.windows])
    keys = sorted(k for part in gathered for k in part)
    threshold = keys[wanted - 1] if wanted and len(keys) >= wanted else (keys[-1] if keys else -1)
    windows = sorted(((k, w) for k, w in state.windows if k <= threshold), key=lambda kw: kw[0])
    parts = _gather(pick_heldout(state.heldout, options.heldout_tokens))
    heldout = [d for part in parts for d in part]
    totals = _all_sum(np.asarray([state.documents, state.tokens], dtype=np.int64))
    return _Pass(_all_sum(state.counts), windows, list(pick_heldout(heldout, options.heldout_tokens)),
                 int(totals[0]), int(totals[1]))


class Act2Probe:
    """Adds act² of every down_proj input into [layer, bucket of the position's token, channel].

    On CPUs the per-bucket sum is an index_add_ (under 1% of the MLP's time); on GPUs, where
    thousands of positions would contend for a few dozen rows of atomics, it is a product with the
    batch's one-hot bucket matrix, a small dense matmul. The last bucket collects padding.
    """

    def __init__(self, layers: int, buckets: int, ffn: int, bucket_batches: list[torch.Tensor],
                 device: torch.device, matmul: bool | None = None, gram: bool = False) -> None:
        self.sums = torch.zeros(layers, buckets + 1, ffn, dtype=torch.float64, device=device)
        # With `gram`, also sum a a^T over real positions: what the down_proj refit solves with.
        self.gram = torch.zeros(layers, ffn, ffn, dtype=torch.float64, device=device) if gram else None
        self.bucket_batches = bucket_batches
        self.matmul = device.type == "cuda" if matmul is None else matmul
        self.ids: torch.Tensor | None = None
        self.real: torch.Tensor | None = None  # positions that are not padding, for the Gram
        self.onehot: torch.Tensor | None = None

    def begin_batch(self, index: int) -> None:
        self.ids = self.bucket_batches[index]
        self.real = self.ids != self.sums.shape[1] - 1 if self.gram is not None else None
        if self.matmul:
            self.onehot = torch.zeros(self.sums.shape[1], self.ids.numel(), dtype=torch.float32,
                                      device=self.ids.device)
            self.onehot[self.ids, torch.arange(self.ids.numel(), device=self.ids.device)] = 1.0

    def down_input(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        flat = x.reshape(-1, x.shape[-1]).float()
        if self.onehot is not None:
            part = self.onehot @ (flat * flat)
        else:
            assert self.ids is not None, "begin_batch sets the ids before any layer runs"
            part = torch.zeros(self.sums.shape[1:], dtype=torch.float32, device=flat.device)
            part.index_add_(0, self.ids, flat * flat)
        self.sums[layer] += part.to(torch.float64)
        if self.gram is not None:
            real = flat[self.real]
            self.gram[layer] += (real.T @ real).to(torch.float64)
        return None


class PredictedCounts:
    """Sums softmax(logits) over every `stride`-th real position: the model's own token frequencies.

    The probabilities are taken over every output row (Gemma's final soft-capping included), in
    chunks of positions so the logits never exceed PREDICT_CHUNK_BYTES.
    """

    def __init__(self, runner: ModelRunner, masks: list[torch.Tensor], stride: int) -> None:
        self.runner = runner
        self.rows = runner.output_rows(None)
        self.masks = masks
        self.stride = stride
        self.sums = torch.zeros(self.rows.shape[0], dtype=torch.float64, device=runner.device)
        self.positions = 0
        self.chunk = max(1, PREDICT_CHUNK_BYTES // (4 * self.rows.shape[0]))

    def __call__(self, index: int, hidden: torch.Tensor) -> None:
        mask = self.masks[index]
        width = mask.shape[1]
        pick = mask & (torch.arange(width) % self.stride == self.stride - 1)
        chosen = hidden[pick.to(hidden.device)]
        self.positions += int(chosen.shape[0])
        for part in chosen.split(self.chunk):
            probs = torch.softmax(self.runner.logits(part, self.rows), dim=-1)
            self.sums += probs.sum(dim=0).double()


def pad_batches(windows: list[np.ndarray], seq_len: int, batch_tokens: int,
                pad_value: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded id batches [B, T] of similar lengths, with a mask of real positions."""
    order = sorted(range(len(windows)), key=lambda i: -windows[i].size)
    per_batch = max(1, batch_tokens // seq_len)
    out = []
    for start in range(0, len(order), per_batch):
        group = [windows[i] for i in order[start:start + per_batch]]
        width = max(w.size for w in group)
        ids = torch.full((len(group), width), pad_value, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.bool)
        for row, w in enumerate(group):
            ids[row, :w.size] = torch.from_numpy(w)
            mask[row, :w.size] = True
        out.append((ids, mask))
    return out


def weight_magnitude(source: Source) -> np.ndarray:
    """L2 norm of each channel's weights (gate row, up row, down column), per layer.

    The tensors are those the plan cuts along "ffn", found from the family's shapes, so a fused
    gate_up_proj ("2*ffn") adds both of its blocks' rows to the same channel."""
    from converter.io.dtypes import raw_to_torch

    ckpt = source.checkpoint
    dims = source.spec.dims
    out = np.zeros((dims.layers, dims.ffn), dtype=np.float64)
    for slot in source.spec.slots:
        cut = slot.cut("ffn")
        if cut is None or slot.layer is None or slot.name not in ckpt.tensors:
            continue
        axis, copies = cut
        info = ckpt.info(slot.name)
        w = raw_to_torch(ckpt.raw(info.name), info.dtype, info.shape).to(torch.float64).movedim(axis, 0)
        out[slot.layer] += w.square().reshape(copies, dims.ffn, -1).sum(dim=(0, 2)).numpy()
    return np.sqrt(out).astype(np.float32)


def score(source: Source, corpus: Corpus, options: ScoreOptions | None = None,
          layout: BucketLayout | None = None) -> Scores:
    """Score `source` on `corpus`: token counts, bucketed act², act², magnitude, held-out text."""
    options = (options or ScoreOptions()).for_corpus(corpus.is_default)
    rank, _ = dist_info()
    dims = source.spec.dims
    if options.gram:
        check_gram_size(dims.layers, dims.ffn)
    tokenizer = load_tokenizer(source.folder)
    show = options.progress and rank == 0
    runner: ModelRunner | None = None
    if not options.counts_only:
        device = pick_device(options.device)
        layerwise = options.layerwise if options.layerwise is not None else not fits(source, device)
        runner = ModelRunner(source, device, layerwise)
    answered, probe_note = run_probe(runner, tokenizer, options, dims.vocab, rank, _gather)
    extra = probe_documents(answered, tokenizer) if answered is not None and corpus.is_default else []
    described = corpus.describe()
    if extra:
        described = f"{PROBE_ORIGIN} answers ({len(extra)} prompts)" + (
            f" + {described}" if DEFAULT_KEEPS_PYDOC else "")
    with progress_bar(show, desc="count", unit="doc") as bar:
        state = _reduce(count_pass(source, corpus, tokenizer, options, bar.update, extra), options)
    if layout is None:
        layout = BucketLayout.from_ranking(token_ranking(source.folder, state.counts), options.bins_per_octave)
    sums = np.zeros((dims.layers, layout.buckets, dims.ffn), dtype=np.float64)
    gram = np.zeros((dims.layers, dims.ffn, dims.ffn), dtype=np.float64) if options.gram else None
    predicted = np.zeros(dims.vocab, dtype=np.float64)
    matmul: MatmulSums | None = None
    experts: ExpertSums | None = None
    scored = predicted_positions = 0
    if runner is not None:
        routed_entries = expert_entries(runner.moe, runner.prefix, dims.hidden, runner.linear_widths)
        widths = {**runner.linear_widths, OUTPUT_NAME: dims.hidden, **routed_entries.shapes}
        matmul = MatmulSums({k: np.zeros(w, dtype=np.float64) for k, w in widths.items()}, 0, options.seq_len,
                            (), {k: np.zeros(n, dtype=np.int64) for k, n in routed_entries.counts.items()})
    if state.windows and runner is not None:
        device = runner.device
        batches = pad_batches([w for _, w in state.windows], options.seq_len, options.batch_tokens)
        bucket_of = torch.from_numpy(layout.token_bucket.astype(np.int64))
        bucket_batches = [torch.where(mask, bucket_of[ids], layout.buckets).reshape(-1).to(device)
                          for ids, mask in batches]
        probe = Act2Probe(dims.layers, layout.buckets, dims.ffn, bucket_batches, device, gram=options.gram)
        stride = options.predict_stride
        predictor = PredictedCounts(runner, [mask for _, mask in batches], stride) if stride else None
        inputs = MatmulInputCollector(widths, [mask for _, mask in batches], device, routed_entries)
        routed = (ExpertCollector(dims.layers, runner.moe, layout.buckets, bucket_batches, device, inputs,
                                  runner.prefix)
                  if runner.moe else None)

        def on_output(index: int, hidden: torch.Tensor) -> None:
            inputs.output_input(index, hidden)
            if predictor is not None:
                predictor(index, hidden)

        with progress_bar(show, total=len(batches), desc="score", unit="batch") as bar:
            runner.run([ids for ids, _ in batches], probe, on_output=on_output, progress=bar.update,
                       on_linear=inputs.linear_input, on_experts=None if routed is None else routed.experts_input)
        matmul = inputs.result(0, options.seq_len, ())
        experts = None if routed is None else routed.result()
        sums = probe.sums[:, :layout.buckets].cpu().numpy()
        if predictor is not None:
            predicted[:] = predictor.sums[:dims.vocab].cpu().numpy()
            predicted_positions = predictor.positions
        if probe.gram is not None:
            gram = probe.gram.cpu().numpy()
        scored = sum(int(mask.sum()) for _, mask in batches)
    sums = _all_sum(sums)
    gram = None if gram is None else _all_sum(gram)
    predicted = _all_sum(predicted)
    totals = _all_sum(np.asarray([scored, len(state.windows), predicted_positions], dtype=np.int64))
    if experts is None and runner is not None and runner.moe:  # no windows on this rank: zeros, reduced alike
        experts = ExpertCollector(dims.layers, runner.moe, layout.buckets, [], torch.device("cpu")).result()
    if experts is not None:
        experts = ExpertSums(_all_sum(experts.importance), _all_sum(experts.tokens), _all_sum(experts.gate))
    if matmul is not None:
        names = sorted(matmul.sums)
        flat = _all_sum(np.concatenate([matmul.sums[k].reshape(-1) for k in names]))
        ends = np.cumsum([matmul.sums[k].size for k in names])
        reduced = {k: v.reshape(matmul.sums[k].shape) for k, v in zip(names, np.split(flat, ends[:-1]))}
        routed_counts = {k: _all_sum(v) for k, v in matmul.expert_counts.items()}
        matmul = MatmulSums(reduced, int(totals[0]), options.seq_len, (described,),
                            routed_counts) if totals[0] else None
    return Scores(
        fingerprint=source.checkpoint.fingerprint(), architecture=source.spec.architecture, counts=state.counts,
        importance=sums, act2=sums.sum(axis=1), magnitude=weight_magnitude(source), layout=layout,
        corpus=(described,), tokens_counted=state.tokens, tokens_scored=int(totals[0]),
        sequences=int(totals[1]), documents=state.documents, seq_len=options.seq_len, heldout=tuple(state.heldout),
        heldout_cap=options.heldout_tokens, gram=gram, predicted=predicted if totals[2] else None,
        tokens_predicted=int(totals[2]), probe=answered, probe_note=probe_note, matmul=matmul, experts=experts)


def check_gram_size(layers: int, ffn: int) -> None:
    """Refuse --refit statistics that would not fit: the Gram sums are layers x ffn^2 doubles."""
    size = layers * ffn * ffn * 8
    if size > GRAM_LIMIT_BYTES:
        raise ConvertError(f"--refit needs {size / 2**30:.1f} GiB of activation Gram matrices ({layers} layers x "
                           f"{ffn}^2 doubles), more than the {GRAM_LIMIT_BYTES >> 30} GiB it allows; prune without "
                           "--refit")
