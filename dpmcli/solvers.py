"""The update rule: one pure function from (plan row, x, model output, history, noise) to x_next.

No loops, no state, no printing. All numbers come from the plan (``plan.StepCoefficients``);
a step is the model-output conversion folded into one linear combination of tensors, done
with a handful of in-place tensor ops.
"""

from __future__ import annotations

import torch

from .errors import NumericalError
from .plan import StepCoefficients

_UPCAST = (torch.float16, torch.bfloat16)


def threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clip each sample to its ``ratio`` quantile of |x0|, rescaled."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


def integrated_output(row: StepCoefficients, x: torch.Tensor, out: torch.Tensor, ratio: float, max_value: float):
    """m0 in full (x0 for ++ algorithms, eps otherwise), thresholded when the plan asks for it."""
    if not row.thresholding:
        return x * row.p + out * row.q
    x0 = threshold(x * row.x0_p + out * row.x0_q, ratio, max_value)
    if row.p == row.x0_p and row.q == row.x0_q:
        return x0
    return (x - row.alpha_s * x0) / row.sigma_s


def step(
    row: StepCoefficients,
    x: torch.Tensor,
    out: torch.Tensor,
    history: tuple[torch.Tensor, ...],
    noise_term: torch.Tensor | None = None,
    threshold_ratio: float = 0.995,
    threshold_max: float = 1.0,
    anchor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One row of the plan: returns (x_next, history_next); history is most recent first.

    ``history`` holds what the plan says earlier steps stored (their m0 up to a scale the
    plan already folded into this step's weights). ``noise_term`` is the step's noise already
    scaled, ``row.c * z`` with z standard normal; it is required when ``row.c != 0``.
    ``anchor`` is the latent the update starts from when it is not ``x`` (singlestep stages and
    start-up sweeps; the plan marks the rows whose input it is with ``sets_anchor``).
    A row whose weights the plan found not finite (``row.failure``) raises NumericalError.
    """
    if row.failure is not None:
        raise NumericalError(row.failure)
    dtype = x.dtype
    if dtype in _UPCAST:
        x, out = x.float(), out.float()
    stored = None
    if row.thresholding:
        out = integrated_output(row, x, out, threshold_ratio, threshold_max)
        stored = out if row.keep else None
    sources = (x, out, noise_term, anchor) + history
    terms = row.terms
    if terms:
        first, ratio = terms[0]
        x_next = torch.add(sources[row.pivot], sources[first], alpha=ratio)
        for index, ratio in terms[1:]:
            x_next.add_(sources[index], alpha=ratio)
        if row.pivot_coef != 1.0:
            x_next.mul_(row.pivot_coef)
    else:
        x_next = sources[row.pivot] * row.pivot_coef
    if row.keep and stored is None:
        if row.store_ratio is None:
            stored = out
        else:
            # The history entry about to fall off was made here too: reuse its memory.
            spare = history[row.history_after - 1] if len(history) >= row.history_after else None
            if spare is not None and spare.shape == x.shape and spare.dtype == x.dtype and spare.device == x.device:
                stored = torch.add(x, out, alpha=row.store_ratio, out=spare)
            else:
                stored = torch.add(x, out, alpha=row.store_ratio)
    if stored is not None:
        history = (stored,) + history
    history = history[: row.history_after]
    if dtype in _UPCAST:
        x_next = x_next.to(dtype)
    return x_next, history


def data_prediction(row: StepCoefficients, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x0 implied by the model output at this step (before thresholding)."""
    if row.x0_p == 0.0:
        return out * row.x0_q if row.x0_q != 1.0 else out
    return torch.add(x, out, alpha=row.x0_q / row.x0_p).mul_(row.x0_p)
