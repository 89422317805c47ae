"""The one sampling loop: call the model, keep the history, apply the update, report each step.

It never prints; callbacks receive a :class:`StepEvent` per step and decide what to record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import solvers
from .errors import NumericalError
from .plan import Plan, StepCoefficients


@dataclass(frozen=True)
class StepEvent:
    """What happened at one step: the latent the model saw, its raw output, and the plan row."""

    plan: Plan
    row: StepCoefficients
    x: torch.Tensor
    model_output: torch.Tensor
    x_next: torch.Tensor

    @property
    def index(self) -> int:
        return self.row.index

    def x0(self) -> torch.Tensor:
        """The data prediction at this step."""
        return solvers.data_prediction(self.row, self.x, self.model_output)

    def info(self) -> dict:
        """Where this model call happened: the plan's columns for it."""
        return self.plan.eval_row(self.index)


@dataclass
class RunResult:
    samples: torch.Tensor
    nfe: int
    seconds: float


def _first_nonfinite(event: StepEvent) -> str | None:
    if not bool(torch.isfinite(event.model_output).all()):
        return "the model output"
    if not bool(torch.isfinite(event.x_next).all()):
        return "the updated latent"
    return None


def sample(
    plan: Plan,
    model: Callable,
    x: torch.Tensor,
    noise: Callable | None = None,
    callbacks: tuple[Callable[[StepEvent], None], ...] = (),
    check_finite: bool = True,
) -> RunResult:
    """Run every step of ``plan`` from ``x`` (x_T). ``noise(step, like, scale)`` feeds the SDE steps."""
    cfg = plan.config
    timesteps = plan.timestep_values
    history: tuple[torch.Tensor, ...] = ()
    anchor = None
    nfe = 0
    start = time.perf_counter()
    for row in plan.rows:
        if row.failure is not None:  # before the model call it would waste
            raise NumericalError(row.failure)
        if row.sets_anchor:
            anchor = x
        out = model(x, timesteps[row.index])
        nfe += 1
        z = None
        if row.c != 0.0:
            if noise is None:
                raise ValueError("an SDE plan needs a noise source")
            z = noise(row.step, x, row.c)
        x_next, history = solvers.step(
            row, x, out, history, z, cfg.dynamic_thresholding_ratio, cfg.sample_max_value, anchor
        )
        event = StepEvent(plan, row, x, out, x_next)
        if check_finite:
            bad = _first_nonfinite(event)
            if bad is not None:
                where = f"step {row.step}" + (f" (evaluation {row.index})" if plan.nfe != plan.steps else "")
                raise NumericalError(
                    f"{where} (timestep {timesteps[row.index]}, sigma {plan.evaluations[row.index].sigma:.6g}): "
                    f"{bad} contains NaN or Inf"
                )
        for callback in callbacks:
            callback(event)
        x = x_next
    return RunResult(samples=x, nfe=nfe, seconds=time.perf_counter() - start)
