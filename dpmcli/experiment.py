"""One sampling run from options to a report: model, x_T, noise source, loop, statistics.

The command line and later sweeps (``compare``) share this; it returns data, never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import SolverConfig
from .devices import resolve_device, resolve_dtype
from .errors import ConfigError
from .models import MixtureModel, load_mixture
from .noise import ArrayNoise, GaussianNoise, initial_latents
from .plan import Plan, build_plan
from .sampler import RunResult, sample
from .stats import StepStatistics, mixture_summary, tensor_stats

DEFAULT_BATCH = 1024


@dataclass
class RunSpec:
    """Everything ``sample`` needs besides the solver config."""

    model: str = "ring"
    batch: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    x_init: Path | None = None
    noise: Path | None = None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "batch": self.batch,
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "x_init": None if self.x_init is None else str(self.x_init),
            "noise": None if self.noise is None else str(self.noise),
        }


@dataclass
class Prepared:
    plan: Plan
    model: MixtureModel
    x_init: torch.Tensor
    noise: Callable
    spec: RunSpec
    device: torch.device
    dtype: torch.dtype
    warnings: list[str] = field(default_factory=list)


@dataclass
class SampleReport:
    prepared: Prepared
    result: RunResult
    steps: list[dict]
    final: dict
    mixture: dict

    def _adaptive_summary(self) -> dict:
        attempts = getattr(self.result, "attempts", None)
        if attempts is None:
            return {}
        return {"adaptive": {"accepted": self.result.accepted, "rejected": self.result.rejected, "attempts": attempts}}

    def document(self) -> dict:
        """The JSON document of ``dpmcli sample --format json``."""
        plan, spec = self.prepared.plan, self.prepared.spec
        config = {
            **plan.config.to_dict(),
            **spec.to_dict(),
            "batch": int(self.prepared.x_init.shape[0]),
            "resolved_device": str(self.prepared.device),
        }
        return {
            "config": config,
            "sigmas": plan.sigmas.tolist(),
            "steps": self.steps,
            "nfe": self.result.nfe,
            "seconds": self.result.seconds,
            "final": self.final,
            "mixture": self.mixture,
            "convergence_order": plan.convergence_order,
            "order_note": plan.order_note,
            **self._adaptive_summary(),
            "warnings": list(self.prepared.warnings),
        }


def _load_x_init(path: Path, dims: int, batch: int | None) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--x-init: cannot read {path} as a .npy array ({exc})") from None
    if array.ndim != 2 or array.shape[1] != dims or array.shape[0] < 1:
        raise ConfigError(f"--x-init: {path} has shape {array.shape}; this model needs (batch, {dims})")
    if batch is not None and batch != array.shape[0]:
        raise ConfigError(f"--batch: {batch} conflicts with --x-init, which holds {array.shape[0]} rows; drop one of them")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise ConfigError(f"--x-init: {path} must hold finite numbers")
    return torch.from_numpy(array.astype(np.float64))


def prepare(config: SolverConfig, spec: RunSpec) -> Prepared:
    """Validate everything and build the run's inputs; raises ConfigError before any work."""
    plan = build_plan(config)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.batch is not None and spec.batch < 1:
        raise ConfigError(f"--batch: {spec.batch} is not allowed; it must be at least 1")
    mixture = load_mixture(spec.model)
    model = MixtureModel(mixture, plan.schedule, plan.config.prediction_type)
    if spec.x_init is not None:
        x = _load_x_init(spec.x_init, mixture.dims, spec.batch).to(device=device, dtype=dtype)
    else:
        batch = DEFAULT_BATCH if spec.batch is None else spec.batch
        x = initial_latents(spec.seed, (batch, mixture.dims), device, dtype)
    warnings = list(plan.warnings)
    if spec.noise is not None:
        noise = ArrayNoise.load(spec.noise, plan.steps, tuple(x.shape))
        if not plan.config.is_sde:
            warnings.append(f"--noise is ignored: {plan.config.algo} draws no noise")
    else:
        noise = GaussianNoise(spec.seed)
    return Prepared(plan, model, x, noise, spec, device, dtype, warnings)


def run_plan(plan: Plan, model, x: torch.Tensor, noise=None, callbacks=()):
    """The loop a plan asks for: the plan's rows, or the adaptive controller."""
    if plan.config.method == "adaptive":
        from .adaptive import sample_adaptive

        return sample_adaptive(plan, model, x, callbacks)
    return sample(plan, model, x, noise, callbacks)


def run(prepared: Prepared, on_step: Callable | None = None, extra: tuple[Callable, ...] = ()) -> SampleReport:
    """Run the loop with per-step statistics; NumericalError on the first NaN/Inf."""
    recorder = StepStatistics()
    callbacks = (recorder, *extra) + (() if on_step is None else (on_step,))
    result = run_plan(prepared.plan, prepared.model, prepared.x_init, prepared.noise, callbacks)
    final = tensor_stats(result.samples)
    summary = mixture_summary(prepared.model.mixture, result.samples)
    return SampleReport(prepared, result, recorder.rows, final, summary)


def solve(mixture, x_T: torch.Tensor, **options):
    """Run the solver that ``options`` describe (SolverConfig's names) on a mixture's exact model,
    from x_T; returns (samples, plan). A short way to get errors for convergence studies."""
    from .api import DPMSolver

    solver = DPMSolver(**options)
    model = MixtureModel(mixture, solver.plan.schedule, solver.config.prediction_type)
    x = x_T.clone()
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    return x, solver.plan
