"""One sampling run from options to a report: model, x_T, noise source, loop, statistics.

The command line and later sweeps (``compare``) share this; it returns data, never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .adaptive import sample_adaptive
from .api import DPMSolver
from .brownian import NOISE_KINDS, noise_source
from .config import SolverConfig
from .devices import check_batch_memory, resolve_device, resolve_dtype
from .errors import ConfigError
from .models import Denoiser, MixtureModel, is_mixture, load_model
from .recipe import check_recipe_identity, check_recipe_schedule
from .noise import ArrayNoise, check_real_finite, initial_latents
from .processes import trained_process
from .plan import Plan, build_plan
from .sampler import RunResult, sample
from .stats import StepStatistics, tensor_stats

# The training schedule travels as a group: mixing a model's betas with the user's would
# describe a process the network never saw.
BETA_OPTIONS = ("beta_schedule", "beta_start", "beta_end", "train_steps", "trained_betas", "rescale_zero_snr")


@dataclass
class RunSpec:
    """Everything ``sample`` needs besides the solver config."""

    model: str = "ring"
    batch: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    x_init: Path | None = None
    noise: Path | str | None = None  # None or "gaussian": fresh draws; "brownian": one path for every grid; else a .npy
    class_label: str | int | None = None
    guidance_scale: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    allow_download: bool = False

    def conditioning(self) -> dict:
        """The options that go to the model's loader (None: not given)."""
        return {
            "class_label": self.class_label, "guidance_scale": self.guidance_scale, "prompt": self.prompt,
            "negative_prompt": self.negative_prompt, "height": self.height, "width": self.width,
            "allow_download": self.allow_download,
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "batch": self.batch,
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "x_init": None if self.x_init is None else str(self.x_init),
            "noise": None if self.noise in (None, "gaussian") else str(self.noise),
            **{k: v for k, v in self.conditioning().items() if v is not None and v is not False},
        }


@dataclass
class Prepared:
    plan: Plan
    model: Denoiser
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
    quality: dict  # the model's sample-quality numbers (mixtures: the exact-distribution summary)

    @property
    def mixture(self) -> dict | None:
        return self.quality if self.prepared.model.mixture is not None else None

    def _adaptive_summary(self) -> dict:
        result = self.result
        if result.attempts is None:
            return {}
        return {"adaptive": {"accepted": result.accepted, "rejected": result.rejected, "attempts": result.attempts}}

    def document(self) -> dict:
        """The JSON document of ``dpmcli sample --format json``."""
        plan, spec = self.prepared.plan, self.prepared.spec
        config = {
            **plan.config.to_dict(),
            **spec.to_dict(),
            "batch": int(self.prepared.x_init.shape[0]),
            "device": str(self.prepared.device),  # what ran; --device auto is resolved
            "resolved_device": str(self.prepared.device),
        }
        return {
            "config": config,
            "sigmas": plan.sigmas.tolist(),
            "steps": self.steps,
            "nfe": self.result.nfe,
            "seconds": self.result.seconds,
            "final": self.final,
            "model": self.prepared.model.describe(),
            **({"mixture": self.quality} if self.mixture is not None else {"quality": self.quality}),
            "convergence_order": plan.convergence_order,
            "order_note": plan.order_note,
            **self._adaptive_summary(),
            "warnings": list(self.prepared.warnings),
        }


def _load_x_init(path: Path, shape: tuple[int, ...], batch: int | None) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--x-init: cannot read {path} as a .npy array ({exc})") from None
    if array.ndim != 1 + len(shape) or tuple(array.shape[1:]) != tuple(shape) or array.shape[0] < 1:
        want = ", ".join(str(s) for s in shape)
        raise ConfigError(f"--x-init: {path} has shape {array.shape}; this model needs (batch, {want})")
    if batch is not None and batch != array.shape[0]:
        raise ConfigError(f"--batch: {batch} conflicts with --x-init, which holds {array.shape[0]} rows; drop one of them")
    check_real_finite("--x-init", path, array)
    return torch.from_numpy(array.astype(np.float64))


def apply_model_schedule(config: SolverConfig, options: dict, explicit=frozenset(), *, model: str = "this model") -> tuple[SolverConfig, list[str]]:
    """The model's own schedule in place of dpmcli's defaults; options the user typed win, but for the process.

    Returns the config and notes for the options that overrode the model's. ``model`` names the
    model in the error for a typed ``--process`` other than the one it was trained on.
    """
    if not options:
        return config, []
    # a network is sampled on the process it was trained on: a typed --process cannot change what it predicts
    trained = trained_process(options)
    if "process" in explicit and trained is not None and config.process != trained:
        raise ConfigError(f"--process: {config.process!r} is not allowed with --model {model}, which was trained on --process {trained}; drop --process")
    notes = []
    changes = {k: v for k, v in options.items() if k not in explicit}
    typed_betas = [k for k in BETA_OPTIONS if k in explicit]
    if typed_betas and any(k in options for k in BETA_OPTIONS):
        for k in BETA_OPTIONS:
            changes.pop(k, None)
        notes.append(f"--{typed_betas[0].replace('_', '-')} replaces the training schedule the model was trained with")
    for key in sorted(set(options) & set(explicit) - set(BETA_OPTIONS)):
        if options[key] != getattr(config, key):
            notes.append(f"--{key.replace('_', '-')} {getattr(config, key)} overrides the model's {options[key]}")
    if "flow_shift" in explicit and "flow_mu" in changes:  # a typed static shift replaces the one the image size gave
        notes.append(f"--flow-shift {config.flow_shift} replaces the model's dynamic shift (mu {changes.pop('flow_mu'):.4f})")
    if "trained_betas" in changes and changes["trained_betas"] is not None:
        changes["trained_betas"] = tuple(float(b) for b in changes["trained_betas"])
    return config.with_options(**changes), notes


def load_and_plan(config: SolverConfig, spec: RunSpec, explicit=frozenset(), recipe=None) -> tuple[Denoiser, Plan, torch.device, torch.dtype, list[str]]:
    """Validate the options, load the model, and build the plan on the model's schedule.

    The model returned is the one the run calls: ``model.bind(plan)`` (for the exact mixtures, the
    mixture on the plan's schedule; a network is returned as loaded). With a ``recipe`` the config is
    the recipe's whole: the model's schedule must be the one it was tuned on.
    """
    if is_mixture(spec.model):
        build_plan(config)  # checked before any work; a network's own schedule may make other options valid
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.batch is not None and spec.batch < 1:
        raise ConfigError(f"--batch: {spec.batch} is not allowed; it must be at least 1")
    model = load_model(spec.model, device=device, dtype=dtype, **spec.conditioning())
    if recipe is not None:
        check_recipe_schedule(recipe, model.schedule_options)
        check_recipe_identity(recipe, model.identity() if recipe.model_identity is not None else None)
        notes = []
    else:
        config, notes = apply_model_schedule(config, model.schedule_options, explicit, model=spec.model)
    plan = build_plan(config)
    return model.bind(plan), plan, device, dtype, notes


def prepare(config: SolverConfig, spec: RunSpec, explicit=frozenset(), recipe=None) -> Prepared:
    """Validate everything and build the run's inputs; raises ConfigError before any work.

    ``explicit`` names the options the user typed (they win over the model's schedule); ``recipe``:
    the run is a recipe's (``recipe.recipe_config``), on the schedule it was tuned on.
    """
    model, plan, device, dtype, notes = load_and_plan(config, spec, explicit, recipe)
    latent_dtype = model.latent_dtype or dtype
    shape = tuple(model.sample_shape)
    if spec.x_init is not None:
        x = _load_x_init(spec.x_init, shape, spec.batch).to(device=device, dtype=latent_dtype)
    else:
        batch = model.default_batch if spec.batch is None else spec.batch
        check_batch_memory(model, batch, device)
        x = initial_latents(spec.seed, (batch, *shape), device, latent_dtype, plan.schedule.init_noise_sigma)
    warnings = list(model.notes) + list(plan.warnings) + notes
    noise = run_noise(spec, plan, tuple(x.shape))
    if spec.noise not in (None, "gaussian") and not plan.config.is_sde:
        warnings.append(f"--noise is ignored: {plan.config.algo} draws no noise")
    return Prepared(plan, model, x, noise, spec, device, dtype, warnings)


def run_noise(spec: RunSpec, plan: Plan, shape: tuple[int, ...]):
    """The SDE noise of a run: seeded Gaussian draws, the seed's Brownian path (the same path at every step
    count, as ``compare`` reads it), or a user's array."""
    if spec.noise is None or str(spec.noise) in NOISE_KINDS:
        return noise_source(str(spec.noise or "gaussian"), spec.seed, plan)
    return ArrayNoise.load(spec.noise, plan.noise_draws or plan.steps, shape)


def run_plan(plan: Plan, model, x: torch.Tensor, noise=None, callbacks=()) -> RunResult:
    """The loop a plan asks for: the plan's rows, or the adaptive controller."""
    if plan.config.method == "adaptive":
        return sample_adaptive(plan, model, x, callbacks)
    return sample(plan, model, x, noise, callbacks)


def run(prepared: Prepared, on_step: Callable | None = None, extra: tuple[Callable, ...] = ()) -> SampleReport:
    """Run the loop with per-step statistics; NumericalError on the first NaN/Inf."""
    recorder = StepStatistics()
    callbacks = (recorder, *extra) + (() if on_step is None else (on_step,))
    result = run_plan(prepared.plan, prepared.model, prepared.x_init, prepared.noise, callbacks)
    final = tensor_stats(result.samples)
    return SampleReport(prepared, result, recorder.rows, final, prepared.model.quality(result.samples))


def solve(mixture, x_T: torch.Tensor, **options):
    """Run the solver that ``options`` describe (SolverConfig's names) on a mixture's exact model,
    from x_T; returns (samples, plan). A short way to get errors for convergence studies."""
    solver = DPMSolver(**options)
    model = MixtureModel(mixture).bind(solver.plan)
    x = x_T.clone()
    for t in solver.timesteps:
        x = solver.step(model(solver.scale_model_input(x, t), t), t, x)
    return x, solver.plan
