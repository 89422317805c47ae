"""The update rule: one pure function from (plan row, x, model output, loop state, noise) to x_next.

No loops, no hidden state, no printing. All numbers come from the plan (``rows.StepCoefficients``);
a step is the model-output conversion folded into one linear combination of tensors, done
with a handful of in-place tensor ops. What a loop carries between rows is one value,
:class:`StepState`, which :func:`step` takes and returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import NumericalError
from .rows import StepCoefficients

_UPCAST = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False, slots=True)
class StepState:
    """What a loop carries from one row to the next.

    ``history``: the model outputs later rows still read (most recent first, in the form and
    scale the plan says); ``anchor``: the latent the update of singlestep stages and start-up
    sweeps starts from (set by the rows the plan marks ``sets_anchor``), or with UniC the last
    corrected latent (set by the rows that carry a ``correction``).
    """

    history: tuple[torch.Tensor, ...] = ()
    anchor: torch.Tensor | None = None


START = StepState()  # the state before the first row


def scaled_noise(row: StepCoefficients, x: torch.Tensor, draw: Callable | None = None, z: torch.Tensor | None = None):
    """The row's noise ``row.c * z`` (None for an ODE row): from ``z`` (standard normal) if given,
    else ``draw(index, like, scale)``, a noise source that returns it already scaled; ``index`` is the
    row's ``noise_index`` (the grid step, for every method that draws once per step)."""
    if row.c == 0.0:
        return None
    if z is not None:
        return z * row.c
    if draw is None:
        raise ValueError("an SDE plan needs a noise source")
    return draw(row.noise_index, x, row.c)


def threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clip each sample to its ``ratio`` quantile of |x0|, rescaled."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


def integrated_output(row: StepCoefficients, x: torch.Tensor, out: torch.Tensor):
    """m0 in full (x0 for ++ algorithms, eps otherwise), thresholded when the plan asks for it."""
    if not row.thresholding:
        return x * row.p + out * row.q
    x0 = threshold(x * row.x0_p + out * row.x0_q, row.threshold_ratio, row.threshold_max)
    if row.p == row.x0_p and row.q == row.x0_q:
        return x0
    return (x - row.alpha_s * x0) / row.sigma_s


def step(
    row: StepCoefficients,
    x: torch.Tensor,
    out: torch.Tensor,
    state: StepState = START,
    noise_term: torch.Tensor | None = None,
) -> tuple[torch.Tensor, StepState]:
    """One row of the plan: returns (x_next, the state for the next row).

    ``state.history`` holds what the plan says earlier rows stored (their m0 up to a scale the
    plan already folded into this row's weights). ``noise_term`` is the row's noise already
    scaled, ``row.c * z`` with z standard normal (see :func:`scaled_noise`); it is required when
    ``row.c != 0``. A row the plan marks ``sets_anchor`` makes ``x`` the anchor later rows start
    from. A row whose weights the plan found not finite (``row.failure``) raises NumericalError.
    """
    if row.failure is not None:
        raise NumericalError(row.failure)
    anchor = x if row.sets_anchor else state.anchor
    history = state.history
    dtype = x.dtype
    if dtype in _UPCAST:
        x, out = x.float(), out.float()
    stored = None
    if row.thresholding:
        out = integrated_output(row, x, out)
        stored = out if row.keep else None
    if row.correction:
        anchor = _combine(row.correction, (x, out, None, state.anchor) + history)  # UniC: the corrected latent
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
    return x_next, StepState(history, anchor)


def _combine(terms: tuple[tuple[int, float], ...], sources) -> torch.Tensor:
    """sum_k weight_k * sources[slot_k]: a row's correction (a few terms; not on the fused path)."""
    (first, weight), rest = terms[0], terms[1:]
    total = sources[first].to(sources[0].dtype) * weight  # in the (upcast) dtype of x
    for slot, weight in rest:
        total.add_(sources[slot], alpha=weight)
    return total


def data_prediction(row: StepCoefficients, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x0 implied by the model output at this step (before thresholding)."""
    if row.x0_p == 0.0:
        return out * row.x0_q if row.x0_q != 1.0 else out
    return torch.add(x, out, alpha=row.x0_q / row.x0_p).mul_(row.x0_p)
