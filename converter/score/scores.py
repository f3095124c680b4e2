"""Scores: what a calibration pass learned about a model, as one additive safetensors file.

`scores.safetensors` holds the token counts [vocab], common-token channel importance per
frequency-rank bucket [layers, buckets, ffn], plain act² [layers, ffn] (the Minitron-style
baseline), weight magnitude [layers, ffn], the bucket layout, and a little held-out calibration
text for choosing a split; metadata names the model (Checkpoint.fingerprint()), the corpus and
the tokens seen. Scored with `--refit` it also holds each layer's Gram matrix of down_proj
inputs [layers, ffn, ffn] (float32), what the least-squares refit solves with (see
converter.score.refit_solver). Scored with activations it holds the model's predicted counts [vocab]
(float64: the sum of its next-token probabilities over a sample of positions), which rank the
tokens the corpus never showed (see converter.score.tokens); files from before they existed load
without them. Scored in whole mode it also holds the dense model's greedy answers to the general
probe and their token counts (converter.score.probe_record: flat int32 answer ids with offsets,
prompt ids and split, `general_counts` and `general_predicted` [vocab]); a file scored layer by
layer or with --counts-only holds none, and says why in its `probe_note` metadata. Every
statistic is a sum, so files scored on disjoint corpus shards merge by adding, provided they
were made for the same model with the same bucket layout; held-out text is the union, cut to
the same budget in hash order, as one run over all shards would pick it.
The probe answers depend on the model and the probe options only, not on the shard: a merge keeps
one copy (refusing files whose answers differ) and never adds their general counts twice.
Scored with activations it also holds, per matmul weight, the sums of its squared inputs
(`in_sum2.<weight name>`, float64, with `matmul_tokens` in the metadata: converter.score.matmul_inputs),
from which the GGUF exporter writes llama.cpp's importance matrix (an MoE layer's expert projections
one row per expert, with the tokens routed to each in `in_count.<experts module>`, int64); files from
before them load without them, and a merge keeps them only when every file has them.
A mixture-of-experts model's file also holds per-expert sums over routed tokens
(`expert_importance`, `expert_tokens`, `expert_gate`: converter.score.expert_record), added on merge;
dense models and older files have none.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from converter.errors import ConvertError
from converter.io.safetensors_writer import save_whole_file
from converter.score.buckets import BucketLayout
from converter.score.expert_record import TENSORS as EXPERT_TENSORS
from converter.score.expert_record import ExpertSums, add_expert_sums
from converter.score.matmul_inputs import MatmulSums
from converter.score.probe_record import TENSORS as PROBE_TENSORS
from converter.score.probe_record import PROBE_ORIGIN, ProbeRecord

FORMAT = "compact-convert-scores"
VERSION = "1"
TENSORS = ("counts", "importance", "act2", "magnitude", "bucket_of_token", "bucket_edges", "heldout_text",
           "heldout_offsets", "heldout_hashes", "heldout_tokens")
IN_SUM2 = "in_sum2."
IN_COUNT = "in_count."


@dataclass(frozen=True)
class Scores:
    """Sums over a corpus for one model, plus what is needed to plan and check a plan."""

    fingerprint: str
    architecture: str
    counts: np.ndarray
    importance: np.ndarray
    act2: np.ndarray
    magnitude: np.ndarray
    layout: BucketLayout
    corpus: tuple[str, ...]
    tokens_counted: int
    tokens_scored: int
    sequences: int
    documents: int
    seq_len: int
    heldout: tuple[tuple[int, str, int], ...]
    heldout_cap: int
    gram: np.ndarray | None = None
    predicted: np.ndarray | None = None
    tokens_predicted: int = 0
    probe: ProbeRecord | None = None
    probe_note: str = ""
    matmul: MatmulSums | None = None
    experts: ExpertSums | None = None  # mixture-of-experts models only (converter.score.expert_record)

    @property
    def layers(self) -> int:
        return self.importance.shape[0]

    @property
    def ffn(self) -> int:
        return self.importance.shape[2]

    @property
    def vocab(self) -> int:
        return self.counts.shape[0]

    @property
    def general_calibration(self) -> bool:
        """Whether the corpus is the model's own answers to the general probe (scored without --calib)."""
        return bool(self.corpus) and all(part.startswith(PROBE_ORIGIN) for part in self.corpus)

    @property
    def heldout_texts(self) -> list[str]:
        return [text for _, text, _ in self.heldout]

    def describe(self) -> str:
        predicted = f" ({self.tokens_predicted:,} predicted)" if self.tokens_predicted else ""
        return (f"{self.tokens_counted:,} tokens counted, {self.tokens_scored:,} scored{predicted} in {self.sequences} "
                "sequences, "
                f"{len(self.heldout)} held-out documents; corpus: {'; '.join(self.corpus)}")

    def save(self, path: Path) -> Path:
        """Write atomically: a crash leaves no half-written scores file at `path`."""
        text = [t.encode("utf-8") for _, t, _ in self.heldout]
        offsets = np.cumsum([0, *[len(t) for t in text]]).astype(np.int64)
        tensors: dict[str, np.ndarray] = {
            "counts": self.counts.astype(np.int64),
            "importance": self.importance.astype(np.float64),
            "act2": self.act2.astype(np.float64),
            "magnitude": self.magnitude.astype(np.float32),
            "bucket_of_token": self.layout.token_bucket.astype(np.int32),
            "bucket_edges": np.asarray(self.layout.edges, dtype=np.int64),
            "heldout_text": np.frombuffer(b"".join(text) or b"\x00", dtype=np.uint8).copy(),
            "heldout_offsets": offsets,
            "heldout_hashes": np.asarray([h for h, _, _ in self.heldout], dtype=np.int64).reshape(-1),
            "heldout_tokens": np.asarray([n for _, _, n in self.heldout], dtype=np.int64).reshape(-1),
        }
        if self.gram is not None:
            tensors["gram"] = self.gram.astype(np.float32)
        if self.predicted is not None:
            tensors["predicted"] = self.predicted.astype(np.float64)
        if self.probe is not None:
            tensors.update(self.probe.to_tensors())
        if self.matmul is not None:
            tensors.update({IN_SUM2 + k: v.astype(np.float64) for k, v in self.matmul.sums.items()})
            tensors.update({IN_COUNT + k: v.astype(np.int64) for k, v in self.matmul.expert_counts.items()})
        if self.experts is not None:
            tensors.update(self.experts.to_tensors())
        metadata = {
            "format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "architecture": self.architecture,
            "corpus": json.dumps(list(self.corpus)), "tokens_counted": str(self.tokens_counted),
            "tokens_scored": str(self.tokens_scored), "sequences": str(self.sequences),
            "documents": str(self.documents), "seq_len": str(self.seq_len), "heldout_cap": str(self.heldout_cap),
            "layout_id": self.layout.layout_id, "buckets": str(self.layout.buckets),
            "tokens_predicted": str(self.tokens_predicted), "probe_note": self.probe_note,
            "probe_new_tokens": str(self.probe.max_new_tokens if self.probe is not None else 0),
            "matmul_tokens": str(self.matmul.tokens if self.matmul is not None else 0),
        }
        path = Path(path)
        try:
            return save_whole_file(path, tensors, metadata)
        except OSError as exc:
            raise ConvertError(f"cannot write the scores file ({exc.strerror or exc})", path) from exc

    @classmethod
    def load(cls, path: Path) -> Scores:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise ConvertError("scores file does not exist", path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ConvertError("is not a compact-convert scores file (make one with `compact-convert score`)",
                                       path)
                if meta.get("version") != VERSION:
                    raise ConvertError(f"scores format version {meta.get('version')!r} is not {VERSION}; score again",
                                       path)
                present = set(f.keys())
                missing = [n for n in TENSORS if n not in present]
                if missing:
                    raise ConvertError(f"scores file lacks tensor '{missing[0]}'", path)
                t = {n: f.get_tensor(n) for n in TENSORS}
                gram = f.get_tensor("gram") if "gram" in present else None
                predicted = f.get_tensor("predicted") if "predicted" in present else None
                probe_t = ({n: f.get_tensor(n) for n in (*PROBE_TENSORS, "general_predicted") if n in present}
                           if "probe_answer_offsets" in present else None)
                in_sum2 = {n[len(IN_SUM2):]: f.get_tensor(n) for n in sorted(present) if n.startswith(IN_SUM2)}
                in_count = {n[len(IN_COUNT):]: f.get_tensor(n) for n in sorted(present) if n.startswith(IN_COUNT)}
                experts = ExpertSums.from_tensors({n: f.get_tensor(n) for n in EXPERT_TENSORS if n in present})
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, ConvertError):
                raise
            raise ConvertError(f"cannot be read as a scores file ({type(exc).__name__}: {exc})", path) from exc
        try:
            text = t["heldout_text"].tobytes()
            offsets = t["heldout_offsets"].tolist()
            heldout = tuple((int(h), text[a:b].decode("utf-8"), int(n)) for h, n, a, b in
                            zip(t["heldout_hashes"].tolist(), t["heldout_tokens"].tolist(), offsets, offsets[1:]))
            layout = BucketLayout(tuple(int(e) for e in t["bucket_edges"]), t["bucket_of_token"].astype(np.int32))
            scores = cls(meta["fingerprint"], meta.get("architecture", ""), t["counts"], t["importance"], t["act2"],
                         t["magnitude"], layout, tuple(json.loads(meta["corpus"])), int(meta["tokens_counted"]),
                         int(meta["tokens_scored"]), int(meta["sequences"]), int(meta["documents"]),
                         int(meta["seq_len"]), heldout, int(meta["heldout_cap"]), gram, predicted,
                         int(meta.get("tokens_predicted", "0")),
                         None if probe_t is None else ProbeRecord.from_tensors(probe_t,
                                                                               int(meta.get("probe_new_tokens", "0"))),
                         meta.get("probe_note", ""),
                         MatmulSums(in_sum2, int(meta.get("matmul_tokens", "0")), int(meta["seq_len"]),
                                    tuple(json.loads(meta["corpus"])), in_count) if in_sum2 else None, experts)
        except (KeyError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConvertError(f"scores file metadata is damaged ({type(exc).__name__}: {exc})", path) from exc
        scores.check_shapes(path)
        return scores

    def check_shapes(self, path: Path | str) -> None:
        layers, buckets, ffn = self.importance.shape if self.importance.ndim == 3 else (0, 0, 0)
        ok = (self.importance.ndim == 3 and self.act2.shape == (layers, ffn) and self.magnitude.shape == (layers, ffn)
              and self.counts.ndim == 1 and self.layout.token_bucket.shape == self.counts.shape
              and buckets == self.layout.buckets and self.layout.edges[-1] == self.vocab
              and (self.gram is None or self.gram.shape == (layers, ffn, ffn))
              and (self.predicted is None or self.predicted.shape == self.counts.shape)
              and (self.probe is None or (self.probe.general_counts.shape == self.counts.shape
                                          and all(0 <= t < self.vocab for a in self.probe.answers for t in a)))
              and (self.matmul is None or self.matmul.consistent())
              and (self.experts is None or self.experts.fits(layers, buckets)))
        if not ok:
            raise ConvertError("scores file tensors have inconsistent shapes; it is damaged, score again", path)

    def check_model(self, fingerprint: str, vocab: int, layers: int, ffn: int, path: Path | str) -> None:
        """Refuse scores made for another model before they mislead a plan."""
        if self.fingerprint != fingerprint:
            raise ConvertError(f"scores were made for another model (fingerprint {self.fingerprint}, this model is "
                               f"{fingerprint}); score this model", path)
        if (self.vocab, self.layers, self.ffn) != (vocab, layers, ffn):
            raise ConvertError(f"scores have vocab {self.vocab}, {self.layers} layers and ffn {self.ffn}, the model "
                               f"{vocab}, {layers} and {ffn}", path)


def pick_heldout(docs: Sequence[tuple[int, str, int]], cap: int) -> tuple[tuple[int, str, int], ...]:
    """Held-out documents (hash, text, tokens) in hash order until `cap` tokens: the same pick however split."""
    chosen: list[tuple[int, str, int]] = []
    total = 0
    seen: set[int] = set()
    for h, text, tokens in sorted(docs, key=lambda d: (d[0], d[1])):
        if total >= cap:
            break
        if h in seen:
            continue
        seen.add(h)
        chosen.append((h, text, tokens))
        total += tokens
    return tuple(chosen)


def merge(paths: Sequence[Path]) -> Scores:
    """Add scores files from disjoint corpus shards of the same model with the same bucket layout."""
    if not paths:
        raise ConvertError("merge-scores needs at least one scores file")
    first = Scores.load(paths[0])
    out = first
    heldout = list(first.heldout)
    for path in paths[1:]:
        other = Scores.load(path)
        if other.fingerprint != first.fingerprint:
            raise ConvertError(f"was scored on another model (fingerprint {other.fingerprint}) than {paths[0]} "
                               f"({first.fingerprint}); only scores of the same model merge", path)
        if other.layout.layout_id != first.layout.layout_id or other.layout.edges != first.layout.edges:
            raise ConvertError(f"has a different bucket layout ({other.layout.layout_id}) from {paths[0]} "
                               f"({first.layout.layout_id}); score every shard with --layout-from one file so "
                               "they merge", path)
        if (other.gram is None) != (first.gram is None):
            raise ConvertError(f"was scored {'without' if other.gram is None else 'with'} --refit and {paths[0]} "
                               f"{'with' if other.gram is None else 'without'}; score every shard the same way so "
                               "they merge", path)
        if not _same_probe(first.probe, other.probe):
            raise ConvertError(f"holds other general-probe answers than {paths[0]} (another model, or other "
                               "--probe-* options); score every shard with the same options so they merge", path)
        heldout += other.heldout
        gram = None if out.gram is None or other.gram is None else out.gram + other.gram
        matmul = None if out.matmul is None or other.matmul is None else out.matmul.added(other.matmul)
        out = replace(out, gram=gram, matmul=matmul, predicted=_add_optional(out.predicted, other.predicted),
                      experts=add_expert_sums(out.experts, other.experts),
                      tokens_predicted=out.tokens_predicted + other.tokens_predicted,
                      counts=out.counts + other.counts, importance=out.importance + other.importance,
                      act2=out.act2 + other.act2, corpus=out.corpus + other.corpus,
                      tokens_counted=out.tokens_counted + other.tokens_counted,
                      tokens_scored=out.tokens_scored + other.tokens_scored,
                      sequences=out.sequences + other.sequences, documents=out.documents + other.documents,
                      seq_len=max(out.seq_len, other.seq_len), heldout_cap=max(out.heldout_cap, other.heldout_cap),
                      probe=out.probe if out.probe is not None else other.probe,
                      probe_note=out.probe_note if out.probe is not None or not other.probe_note else other.probe_note)
    return replace(out, heldout=pick_heldout(heldout, out.heldout_cap))


def _same_probe(a: ProbeRecord | None, b: ProbeRecord | None) -> bool:
    """Probe answers agree: the same answers, or one file has none (counts only, layer by layer, older)."""
    return a is None or b is None or a.same_answers(b)


def _add_optional(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Sum of two optional statistics; a file without one (counts only, or an older file) adds nothing."""
    if a is None or b is None:
        return b if a is None else a
    return a + b
