"""What a user asks of scoring (ScoreOptions) and of planning (Budget), with each flag declared once.

Both frozen models carry their command-line declarations on their fields (converter.flag_fields),
so `score`, `plan` and the one-shot `compact-convert IN OUT` take the same flags with the same
defaults and checks. The flags that feed both models (--device, --layer-by-layer, --refit) are
one Flag object each, used by a field of each. The module imports neither torch nor the planner:
every command builds its parser from it, and `--help` or an export from a plan must not pay for
either.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from converter.errors import ConvertError
from converter.flag_fields import Flag, check_minimums, flag, internal
from converter.row_grid import ffn_grid
from converter.score.buckets import BINS_PER_OCTAVE
from converter.score.budget import check_ratio

if TYPE_CHECKING:
    from converter.score.scores import Scores

METHODS = ("compact", "act2", "magnitude", "random")
DEVICES = ("auto", "cuda", "cpu")
DEFAULT_RIDGE = 1e-3
DEFAULT_GENERAL_WEIGHT = 0.1  # measured: tools/results/frontier_smollm2.md
GENERAL_MODEL_MAX_DROPPED = 0.02
# (prompts, new tokens) of the general probe. Without --calib the answers are all the calibration
# text, so more and longer ones: on SmolLM2 at -20% they kept " Paris" and brought the held-out
# answers from 2.79x to 2.35x dense bits per byte at the same split (converter.score.corpus).
GENERAL_PROBE = (192, 96)
DOMAIN_PROBE = (64, 48)

DEVICE = Flag("where to score, and to evaluate the splits --target-ratio measures (default auto: a GPU if "
              "there is one)", choices=DEVICES)
LAYER_BY_LAYER = Flag("load one decoder layer at a time when scoring or evaluating (default: only when the "
                      "model does not fit)", name="layer-by-layer")
REFIT = Flag("refit the kept down_proj columns by least squares on the calibration activations (training-free; "
             "recovers much of an FFN cut's loss); scoring then also records the layers x ffn^2 Gram matrices "
             "it needs, and `plan --refit` needs scores made with `score --refit`", name="refit")


@dataclass(frozen=True)
class ScoreOptions:
    """How much text to score and where; defaults suit a laptop as well as a GPU box."""

    calib_tokens: int = flag(128 * 512, Flag(
        "tokens of the activation sample (default 65536 = 128 x 512); counts use all the text", minimum=1))
    seq_len: int = flag(512, Flag("tokens per scored sequence (default 512)", minimum=1))
    batch_tokens: int = flag(8192, Flag("tokens per forward batch (default 8192)", minimum=1))
    heldout_percent: int = internal(10)
    heldout_tokens: int = flag(8192, Flag("held-out calibration tokens kept for choosing a split (default 8192)",
                                          minimum=0))
    bins_per_octave: int = internal(BINS_PER_OCTAVE)
    device: str = flag("auto", DEVICE)
    layerwise: bool | None = flag(None, LAYER_BY_LAYER)
    counts_only: bool = flag(False, Flag("count tokens only (no forward passes)"))
    progress: bool = internal(False)
    gram: bool = flag(False, REFIT)
    predict_tokens: int = flag(4096, Flag(
        "positions of that sample whose next-token probabilities rank the tokens your text never shows "
        "(default 4096; 0: rank them by the tokenizer's prior alone)", minimum=0))
    probe_prompts: int | None = flag(None, Flag(
        "general-probe prompts (everyday chat) the dense model answers greedily while scoring; their answers "
        f"count everyday tokens for --general-weight and, without --calib, are the calibration text (default "
        f"{GENERAL_PROBE[0]} without --calib, {DOMAIN_PROBE[0]} with it; 0 with --probe-heldout 0: no probe, "
        "retention is not measured)", minimum=0))
    probe_heldout: int = flag(32, Flag(
        "held-out general-probe prompts answered while scoring, never calibrated on: plan measures how much of "
        "those answers a pruned model keeps (default 32)", minimum=0))
    probe_new_tokens: int | None = flag(None, Flag(
        f"tokens of each general-probe answer at most (default {GENERAL_PROBE[1]} without --calib, "
        f"{DOMAIN_PROBE[1]} with it)", minimum=1))

    def __post_init__(self) -> None:
        check_minimums(self)

    def for_corpus(self, general: bool) -> ScoreOptions:
        """The probe sizes left unset filled in: larger when the probe's answers are the calibration text."""
        prompts, tokens = GENERAL_PROBE if general else DOMAIN_PROBE
        return replace(self, probe_prompts=prompts if self.probe_prompts is None else self.probe_prompts,
                       probe_new_tokens=tokens if self.probe_new_tokens is None else self.probe_new_tokens)

    @property
    def predict_stride(self) -> int:
        """Every how many positions of a window the next-token probabilities are summed (0: none).

        About predict_tokens of the calib_tokens sample, at least one position per full window. A
        function of the options alone, not of how much text a rank or shard happened to get, so
        sharded, merged and multi-rank scoring sum the same positions.
        """
        if self.predict_tokens <= 0:
            return 0
        return max(1, min(self.seq_len, self.calib_tokens // self.predict_tokens))


@dataclass(frozen=True)
class Budget:
    """What to keep (exact sizes, or a ratio of parameters to remove) and how to choose it."""

    vocab_size: int | None = flag(None, Flag(
        "vocabulary size to keep at most (fewer are requested so the tokenizer rules fit)"))
    intermediate_size: int | None = flag(None, Flag(
        "exact FFN intermediate size to keep (a Qwen2-MoE model's shared expert; its routed experts' width is "
        "--moe-intermediate-size)"))
    moe_intermediate_size: int | None = flag(None, Flag(
        "exact width of every routed expert's FFN to keep, each expert keeping its own best channels "
        "(mixture-of-experts models)"))
    target_ratio: float | None = flag(None, Flag(
        "fraction of parameters to remove, e.g. 0.35 (auto-split: the vocabulary/FFN split is chosen by "
        "measuring candidates on held-out calibration text)"))
    method: str = flag("compact", Flag("channel criterion (default compact; act2, magnitude and random are "
                                       "baselines)", choices=METHODS))
    ffn_multiple: int = flag(32, Flag(
        "round the FFN size to this multiple (default 32); with a quantised --outtype the size is a multiple of "
        "both this and the type's block (256 for GGUF K-quants, 32 for q4_0..q8_0, --int4-block-size for ONNX "
        "int4/int8), so no weight row falls back to another type", minimum=1))
    focus: float = flag(0.0, Flag("extra weight on common tokens' activations, (mean count)^focus (default 0)"))
    seed: int = flag(0, Flag("seed of --method random (default 0)"))
    splits: int = flag(6, Flag("vocab/FFN splits auto-split measures (default 6)", minimum=1))
    refine_rounds: int = internal(2)
    keep_reserved: bool = flag(False, Flag(
        "keep unused reserved special tokens such as <|reserved_special_token_N|>"))
    device: str = flag("auto", DEVICE)
    layerwise: bool | None = flag(None, LAYER_BY_LAYER)
    eval_seq_len: int = internal(1024)
    refit: bool = flag(False, REFIT)
    ridge: float = internal(DEFAULT_RIDGE)
    row_block: int = internal(1)  # the export's row block (converter.row_grid), set by the command
    row_block_why: str = internal("")
    general_weight: float = flag(DEFAULT_GENERAL_WEIGHT, Flag(
        "how much the token ranking and the split choice weigh general use (the dense model's answers to the "
        "general probe) against your --calib text, 0..1 (0: your text only, as before; default "
        f"{DEFAULT_GENERAL_WEIGHT}: measured on SmolLM2 cut by a fifth it costs the domain what 0 does and cuts "
        "the everyday answers' bytes in dropped tokens from 22 to 13 percent; tools/results/frontier_smollm2.md)"))

    max_dropped_share: float | None = flag(None, Flag(
        "largest share of the general probe's answer bytes a plan may put in dropped tokens, 0..1: auto-split "
        "prefers the splits within it (default: "
        f"{GENERAL_MODEL_MAX_DROPPED:g} without --calib, where the model is calibrated for general use and must keep "
        "everyday words; none with --calib, where --general-weight sets the trade)"))

    def __post_init__(self) -> None:
        check_minimums(self)
        if not 0.0 <= self.general_weight <= 1.0:
            raise ConvertError(f"--general-weight must be between 0 and 1, got {self.general_weight}")
        if self.max_dropped_share is not None and not 0.0 <= self.max_dropped_share <= 1.0:
            raise ConvertError(f"--max-dropped-share must be between 0 and 1, got {self.max_dropped_share}")

    def dropped_cap(self, scores: Scores) -> float | None:
        """--max-dropped-share, or its default: the general-model cap for scores calibrated without --calib."""
        if self.max_dropped_share is not None:
            return self.max_dropped_share
        return GENERAL_MODEL_MAX_DROPPED if scores.general_calibration else None

    @property
    def ffn_grid(self) -> int:
        """The multiple FFN widths are drawn on: lcm(--ffn-multiple, the export's row block)."""
        return ffn_grid(self.ffn_multiple, self.row_block)

    def check(self, vocab: int, ffn: int, moe_ffn: int = 0) -> None:
        """Refuse a budget that cannot apply to a model of these sizes (`moe_ffn`: the experts' width, 0 if dense)."""
        if self.method not in METHODS:
            raise ConvertError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        self._check_experts(ffn, moe_ffn)
        if self.target_ratio is not None:
            if self.vocab_size is not None or self.intermediate_size is not None \
                    or self.moe_intermediate_size is not None:
                raise ConvertError("give either --target-ratio or --vocab-size/--intermediate-size"
                                   f"{'/--moe-intermediate-size' if moe_ffn else ''}, not both")
            check_ratio(self.target_ratio)
            return
        if self.vocab_size is None and self.intermediate_size is None and self.moe_intermediate_size is None:
            raise ConvertError("no budget: pass --target-ratio R (e.g. 0.35) or --vocab-size N and/or "
                               + ("--moe-intermediate-size M" if moe_ffn else "--intermediate-size M"))
        if self.vocab_size is not None and not 0 < self.vocab_size <= vocab:
            raise ConvertError(f"--vocab-size {self.vocab_size} must be between 1 and the model's {vocab}")
        if self.intermediate_size is not None and not 0 < self.intermediate_size <= ffn:
            raise ConvertError(f"--intermediate-size {self.intermediate_size} must be between 1 and the model's {ffn}")
        if self.moe_intermediate_size is not None and not 0 < self.moe_intermediate_size <= moe_ffn:
            raise ConvertError(f"--moe-intermediate-size {self.moe_intermediate_size} must be between 1 and the "
                               f"experts' {moe_ffn}")

    def _check_experts(self, ffn: int, moe_ffn: int) -> None:
        """The flags that only make sense for (or against) a mixture-of-experts model."""
        if not moe_ffn:
            if self.moe_intermediate_size is not None:
                raise ConvertError("--moe-intermediate-size is for mixture-of-experts models; this model has no "
                                   "experts (its FFN width is --intermediate-size)")
            return
        if self.refit:
            raise ConvertError("--refit is not built for mixture-of-experts models (per-expert Gram matrices over "
                               "routed tokens are not collected); plan without --refit")
        if self.method == "magnitude":
            raise ConvertError("--method magnitude is not built for mixture-of-experts models (the scores hold no "
                               "per-expert weight norms); use compact, act2 or random")
        if self.intermediate_size is not None and not ffn:
            raise ConvertError("--intermediate-size is the dense or shared-expert FFN width, and this model has "
                               "none; its experts' width is --moe-intermediate-size")
