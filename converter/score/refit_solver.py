"""Least-squares refit of down_proj after an FFN cut: training-free, from activation Gram matrices.

With a the intermediate activations of a layer (act(gate(x)) * up(x), all channels) and W its
down_proj, the dense output is W a. Keeping channels k and slicing gives W[:, k] a_k, which drops
the rest of the sum. The refit picks the X that best reproduces the dense output from the kept
activations over the calibration sample, with a ridge that pulls X toward the plain slice:

    min ||X a_k - W a||^2 + lambda ||X - W[:, k]||^2,   lambda = ridge * mean(diag G[k, k])
    X = W (G[:, k] + lambda E_k) (G[k, k] + lambda I)^-1

where G = sum a a^T is the Gram matrix the scoring pass recorded and E_k selects the kept
columns. The ridge keeps the solve stable where kept channels are nearly collinear, and pulling
toward the slice (not toward zero) makes a plan that keeps every channel come back unchanged.
Equivalently the kept activations are mapped to a full-width input, a~ = M a_k with
M = (G[:, k] + lambda E_k) (G[k, k] + lambda I)^-1, and W a~ = X a_k: the map form lets auto-split
simulate a refitted candidate at the input of the dense down_proj, exactly as it simulates a
plain cut by zeroing channels. Measured on SmolLM2-135M (held-out calibration text, 16k-token
sample), FFN 1536 -> 1024: +30.3% bits per byte sliced, +11.2% refitted; ridges from 1e-5 to
1e-3 agree within 0.1%, 1e-2 is worse.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from converter.errors import ConvertError
from converter.source import Source
from converter.plan import PrunePlan
from converter.ffn_refit import FfnRefit
from converter.score.scores import Scores
from converter.score.stage_options import DEFAULT_RIDGE



def refit_map(gram: np.ndarray, kept: Sequence[int], ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """M^T, [kept, ffn]: a row of kept activations times it is the full-width input that refits W."""
    g = np.asarray(gram, dtype=np.float64)
    k = np.asarray(kept, dtype=np.int64)
    select = np.eye(g.shape[0], dtype=np.float64)[k]
    a = g[np.ix_(k, k)]
    scale = float(np.mean(np.diag(a)))
    if not np.isfinite(scale) or scale <= 0:
        return select
    lam = ridge * scale
    return np.linalg.solve(a + lam * np.eye(k.size), g[k, :] + lam * select)


def require_gram(scores: Scores, path: str) -> np.ndarray:
    if scores.gram is None:
        raise ConvertError("holds no activation Gram matrices, which --refit needs; score again with "
                           "`compact-convert score --refit`", path)
    return scores.gram


def fit_refit(source: Source, scores: Scores, plan: PrunePlan, ridge: float = DEFAULT_RIDGE,
              scores_path: str = "scores") -> PrunePlan:
    """`plan` with refitted down_proj weights for its kept channels, from the source and the Gram."""
    import torch

    from converter.io.dtypes import raw_to_torch

    gram = require_gram(scores, scores_path)
    ckpt = source.checkpoint
    weights = []
    for layer, kept in enumerate(plan.kept_ffn_channels):
        info = ckpt.info(f"{source.spec.family_record.text_prefix}model.layers.{layer}.mlp.down_proj.weight")
        w = raw_to_torch(ckpt.raw(info.name), info.dtype, info.shape).to(torch.float64).numpy()
        weights.append((w @ refit_map(gram[layer], kept, ridge).T).astype(np.float32))
    return PrunePlan(plan.kept_token_ids, plan.kept_ffn_channels, plan.source_fingerprint,
                     {**plan.metadata, "ffn_refit": {"method": "least_squares", "ridge": ridge}}, plan.origin,
                     FfnRefit(tuple(weights), ridge))
