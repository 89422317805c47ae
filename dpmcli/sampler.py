"""The one sampling loop: call the model, keep the history, apply the update, report each step.

It never prints; callbacks receive a :class:`StepEvent` per step and decide what to record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import NumericalError
from .plan import Plan
from .rows import StepCoefficients
from .solvers import START, data_prediction, scaled_noise, step


@dataclass(frozen=True)
class StepEvent:
    """What happened at one model call: the latent the model saw, its raw output, the new latent.

    Every loop emits it: :func:`sample` (``row`` is the plan row stepped), the adaptive
    controller (no plan row: ``columns`` says where the accepted step was, ``prediction`` is
    its x0) and the drop-in scheduler.
    """

    plan: Plan
    row: StepCoefficients | None
    x: torch.Tensor
    model_output: torch.Tensor
    x_next: torch.Tensor
    columns: dict | None = None  # Plan.eval_row's columns, for a step that is no plan row
    prediction: torch.Tensor | None = None  # the data prediction, where the loop has it already

    @property
    def index(self) -> int:
        return self.row.index if self.row is not None else self.columns["step"]

    def x0(self) -> torch.Tensor:
        """The data prediction at this step."""
        if self.prediction is not None:
            return self.prediction
        return data_prediction(self.row, self.x, self.model_output)

    def info(self) -> dict:
        """Where this model call happened: the plan's columns for it."""
        if self.columns is not None:
            return dict(self.columns)
        return self.plan.eval_row(self.index)


@dataclass
class RunResult:
    """The samples a run ends with, its model calls and time; ``attempts`` lists every step the
    adaptive controller tried (None for a planned run)."""

    samples: torch.Tensor
    nfe: int
    seconds: float
    attempts: list[dict] | None = None

    @property
    def accepted(self) -> int:
        return sum(1 for a in self.attempts or () if a["accepted"])

    @property
    def rejected(self) -> int:
        return sum(1 for a in self.attempts or () if not a["accepted"])


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
    timesteps = plan.timestep_values
    state = START
    nfe = 0
    start = time.perf_counter()
    for row in plan.rows:
        if row.failure is not None:  # before the model call it would waste
            raise NumericalError(row.failure)
        out = model(x if row.input_scale == 1.0 else x * row.input_scale, timesteps[row.index])
        nfe += 1
        x_next, state = step(row, x, out, state, scaled_noise(row, x, noise))
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
