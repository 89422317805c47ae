"""``dpmcli tune``: learn where a solver should evaluate the model, for one model and a budget of model calls.

The solver (algorithm, order, weights, corrector, process) is the user's; what is learned is its
grid: the N - 1 evaluation points between the top of the schedule and the last step, as lambda
positions, and the final-step policy (``lower_order_final``, a searched ``--final-decay`` or a searched
final sigma) where it changes the plan. The loss is the interquartile mean of the distances that
``compare``'s error is the median of, on a training set of x_T (ground_truth: the exact ODE end point
of a mixture, a many-step reference run of a network; MMD^2 for an SDE on a mixture); the result is
then scored on held-out x_T from another seed, next to every stock grid for the same solver. How the
grid is parametrised and searched: docs/tune.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .brownian import BrownianNoise
from .compare import scalar_quality
from .config import SolverConfig
from .devices import check_batch_memory, resolve_device, resolve_dtype
from .errors import ConfigError, NumericalError, bad_choice
from .experiment import apply_model_schedule
from .ground_truth import MIXTURE_REFERENCE_STEPS, NETWORK_REFERENCE_STEPS, MixtureReferences, ReferenceRuns
from .metrics import default_bandwidth
from .models import Denoiser, load_model
from .noise import initial_latents
from .plan import Plan, build_plan
from .recipe import RECIPE_FORMAT, Recipe
from .sampler import sample

# The stock grids a tuned grid is compared with (and started from), per process; those a config refuses are skipped.
STOCK_SPACINGS = {
    "vp": ("linspace", "leading", "trailing", "time-uniform", "logsnr", "time-quadratic", "karras", "exponential", "beta"),
    "flow": ("linspace", "logsnr", "karras", "exponential", "beta"),
    "edm": ("karras", "exponential", "logsnr", "beta"),
}
STARTS = 2  # the best stock grids on the training set, each a starting point of the search
TRAIN_BATCH = {"mixture": 512, "network": 200}
# loss evaluations per search (per start and final-step policy): a network's cost a model call each
DEFAULT_EVALUATIONS = {"mixture": 1500, "network": 250}
UNTUNABLE = {"adaptive": "--method adaptive chooses its steps at run time; there is no grid to tune"}


@dataclass
class TuneSpec:
    """What to tune: the solver options (``base``, ``explicit``: the ones typed), the model and the budget."""

    base: SolverConfig = field(default_factory=SolverConfig)
    nfe: int = 10
    model: str = "ring"
    explicit: frozenset = frozenset()
    seed: int = 0  # held-out x_T (compare's default seed: `compare --recipe` scores on the same inputs)
    train_seed: int = 1
    batch: int | None = None  # held-out samples; None: the model's compare batch
    train_batch: int | None = None
    guidance_scale: float | None = None
    conditioning: dict = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    reference_steps: int | None = None
    cache_dir: Path | None = None
    evaluations: int | None = None  # None: DEFAULT_EVALUATIONS for the model's kind
    loss: str = "iqm"  # the statistic of the per-sample distances the search minimises (LOSSES)


@dataclass
class Scored:
    """One configuration's scores: the search's loss on the training x_T (``train_error``) and compare's error on
    the held-out x_T (with the model's quality numbers)."""

    label: str
    config: SolverConfig
    train_error: float
    held_out_error: float | None = None
    quality: dict = field(default_factory=dict)
    target: Plan | None = None  # what it is scored against, where not its own grid's range (a searched final sigma)

    def to_dict(self) -> dict:
        return {"label": self.label, "train_error": self.train_error, "held_out_error": self.held_out_error,
                **({"quality": self.quality} if self.quality else {}), "config": self.config.to_dict()}


@dataclass
class TuneResult:
    recipe: Recipe
    tuned: Scored
    default: Scored  # the user's options on their own (stock) grid
    stock: list[Scored]  # every stock grid for the same solver, best first (held-out error)
    metric: str
    evaluations: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def best_stock(self) -> Scored:
        return self.stock[0]


class Objective:
    """compare's error of a config's final samples on one set of x_T, against that set's ground truth."""

    def __init__(self, model: Denoiser, x_T: torch.Tensor, seed: int, spec: TuneSpec, reference_steps: int):
        self.model, self.x_T, self.seed, self.scale, self.loss_name = model, x_T, seed, spec.guidance_scale, spec.loss
        self.trees: dict = {}
        if model.mixture is not None:
            self.references = MixtureReferences(model.mixture, x_T, seed=seed, bandwidth=default_bandwidth(model.mixture),
                                                reference_steps=reference_steps, cache_dir=spec.cache_dir)
        else:
            self.references = ReferenceRuns(model, x_T, reference_steps, seed=seed, cache_dir=spec.cache_dir)

    def noise_for(self, plan: Plan):
        return BrownianNoise.shared(self.seed, plan, tuple(self.x_T.shape), self.trees)

    def run(self, plan: Plan, check_finite: bool = True) -> torch.Tensor:
        """The run's final samples; ``check_finite`` False skips the per-step NaN checks (the caller checks the end)."""
        denoise = self.model.bind(plan, self.scale)
        noise = self.noise_for(plan) if plan.config.is_sde else None
        return sample(plan, denoise, self.x_T.clone(), noise, check_finite=check_finite).samples

    def score(self, config: SolverConfig, target: Plan | None = None) -> tuple[float, dict]:
        """(error, the model's quality numbers) of config's run against the ground truth over ``target``'s
        lambda range (None: the run's own; a free final sigma is still scored at the configured end); inf where
        the run is not finite."""
        plan = build_plan(config)
        try:
            samples = self.run(plan)
        except NumericalError:
            return math.inf, {}
        row = self.references.score(target or plan, samples.detach().double().cpu(), self.noise_for, self.scale)
        error = row.get("error")
        quality = {} if self.model.mixture is not None else scalar_quality(self.model.quality(samples))
        return (math.inf if error is None or not math.isfinite(error) else float(error)), quality

    def loss(self, config: SolverConfig, target: Plan | None = None) -> float:
        """What the search minimises: a statistic (TuneSpec.loss, LOSSES) of the per-sample L2 distances to the
        ground truth, by default their interquartile mean (the middle half: the median's sample, smoother in
        the grid; measured in docs/tune.md); MMD^2 for an SDE on a mixture."""
        plan = build_plan(config)
        if plan.config.is_sde and self.model.mixture is not None:
            return self.score(config, target)[0]
        try:
            samples = self.run(plan, check_finite=False).detach().double().cpu()  # a search's thousands of runs: checked once, here
        except NumericalError:  # a row whose weights are not finite
            return math.inf
        if not bool(torch.isfinite(samples).all()):
            return math.inf
        over = target or plan
        if self.model.mixture is not None:
            reference = self.references.ode(over)
        else:
            reference = self.references.reference(over, self.noise_for, self.scale)
        error = LOSSES[self.loss_name]((samples - reference).reshape(samples.shape[0], -1).norm(dim=1))
        return error if math.isfinite(error) else math.inf


def interquartile_mean(values: torch.Tensor) -> float:
    """The mean of the middle half of the values (the 25th to 75th percentile, by rank)."""
    ordered = values.sort().values
    n = ordered.shape[0]
    return float(ordered[n // 4: n - n // 4].mean())


# what the search can minimise over the per-sample distances (docs/tune.md measures them side by side)
LOSSES = {
    "iqm": interquartile_mean,
    "mean": lambda d: float(d.mean()),
    "median": lambda d: float(d.median()),
    "geometric-mean": lambda d: float(d.clamp_min(1e-300).log().mean().exp()),
}


def steps_for_budget(base: SolverConfig, nfe: int) -> SolverConfig:
    """The config with the most grid steps whose plan makes at most ``nfe`` model calls (ConfigError if none fits)."""
    if base.method in UNTUNABLE:
        raise ConfigError(f"--method: {UNTUNABLE[base.method]}; tune multistep, singlestep or ancestral methods")
    if not isinstance(nfe, int) or nfe < 1:
        raise ConfigError(f"--nfe: {nfe!r} is not allowed; give the budget of model calls, a positive integer")
    base = base.with_options(nfe=None, sigmas=None, timesteps=None)
    best, least, refused = None, None, None
    for steps in range(1, nfe + base.order + 2):
        try:
            plan = build_plan(base.with_options(steps=steps))
        except ConfigError as exc:  # too few steps for this method (a singlestep start-up of order K needs K)
            refused = refused or exc
            continue
        least = plan.nfe if least is None else min(least, plan.nfe)
        if plan.nfe <= nfe and steps <= nfe:
            best = plan
    if best is None:
        if least is None:
            raise refused
        raise ConfigError(f"--nfe: {nfe} is smaller than this method needs: --method {base.method} --order {base.order} "
                          f"makes at least {least} model calls; give --nfe {least} or more")
    return best.config


FREE_FINAL_SIGMA, FREE_FINAL_DECAY = "searched final sigma", "searched final decay"
MAX_LOG_DECAY = 30.0  # P = e^30: the latent's weight P / (P + 1) is 1 to double precision


class Grid:
    """The searched grid: N - 1 lambda points between the fixed ends, as softmax shares of the lambda range.

    ``free``, one more parameter theta[N]: FREE_FINAL_SIGMA, the last sigma is searched too (its lambda
    gap after the last model call, exp(theta[N])); the run's samples are its latent there, scored against
    the clean end point. FREE_FINAL_DECAY: --final-decay is searched, P = exp(theta[N]) (P = 1, smooth
    data, at theta[N] = 0).
    """

    def __init__(self, plan: Plan, free: str | None = None):
        self.plan, self.free = plan, free
        schedule = plan.schedule
        self.top = float(plan.sigmas[0])
        self.final = float(plan.sigmas[-1])
        self.lam_start = float(plan.lambdas[0])
        # the cleanest lambda the network was trained at; with a finite final sigma, that sigma
        self.lam_end = schedule.trained_limits[1] if self.final == 0.0 else float(plan.lambdas[-1])
        self.steps = plan.steps

    @property
    def free_final(self) -> bool:
        return self.free == FREE_FINAL_SIGMA

    def sigmas(self, theta: np.ndarray) -> tuple[float, ...]:
        shares = theta[: self.steps]
        share = np.exp(shares - shares.max())
        share /= share.sum()
        lams = self.lam_start + (self.lam_end - self.lam_start) * np.cumsum(share)[: self.steps - 1]
        inner = tuple(float(s) for s in np.atleast_1d(self.plan.schedule.sigma_of(lams)))
        if not self.free_final:
            return (self.top, *inner, self.final)
        last = lams[-1] if len(lams) else self.lam_start
        return (self.top, *inner, float(self.plan.schedule.sigma_of(last + math.exp(float(theta[self.steps])))))

    def config(self, base: SolverConfig, theta: np.ndarray) -> SolverConfig:
        """base on the grid theta gives (and its final decay, where that is searched)."""
        config = base.with_options(sigmas=self.sigmas(theta))
        if self.free == FREE_FINAL_DECAY:
            config = config.with_options(final_decay=math.exp(min(float(theta[self.steps]), MAX_LOG_DECAY)))
        return config

    def theta_of(self, plan: Plan) -> np.ndarray | None:
        """The parameters of a stock plan's grid (None where it does not share this grid's ends or count)."""
        if plan.steps != self.steps or not math.isclose(float(plan.sigmas[-1]), self.final, abs_tol=0.0):
            return None
        lams = np.clip(np.asarray(plan.lambdas[1: self.steps], dtype=np.float64), self.lam_start, self.lam_end)
        edges = np.concatenate([[self.lam_start], lams, [self.lam_end]])
        shares = np.maximum(np.diff(edges), 1e-6 * (self.lam_end - self.lam_start))
        theta = np.log(shares / shares.sum())
        if self.free == FREE_FINAL_DECAY:
            return np.append(theta, math.log(plan.config.final_decay or 1.0))
        return np.append(theta, 0.0) if self.free_final else theta


def _search(objective: Objective, grid: Grid, config: SolverConfig, theta: np.ndarray, *, budget: int, tick: Callable[[], None],
            target: Plan | None = None):
    """Powell's method on theta from a start; returns (best theta, its training error)."""
    from scipy.optimize import minimize

    seen: dict = {}

    def loss(values: np.ndarray) -> float:
        key = tuple(np.round(values, 12))
        if key not in seen:
            tick()
            try:
                seen[key] = objective.loss(grid.config(config, values), target)
            except ConfigError:  # a grid a config refuses (a step of zero length)
                seen[key] = math.inf
        return seen[key]

    result = minimize(loss, theta, method="Powell", options={"maxfev": budget, "xtol": 1e-3, "ftol": 1e-6})
    return np.asarray(result.x), float(result.fun)


def final_policies(config: SolverConfig) -> list[tuple[SolverConfig, str | None]]:
    """The final-step policies worth searching, as (config, what is searched besides the grid):
    lower_order_final on and off where the plans differ; and where the run ends at sigma 0 on the ODE,
    a searched --final-decay, and a searched final sigma reached by a full-order last step (its latent
    there is the sample, scored at sigma 0)."""
    other = config.with_options(lower_order_final=not config.lower_order_final)
    try:
        differs = [r.b for r in build_plan(config).rows] != [r.b for r in build_plan(other).rows]
    except ConfigError:
        differs = False
    policies = [(config, None), (other, None)] if differs else [(config, None)]
    if config.final_sigma == "zero" and not (config.is_sde or config.ancestral):
        policies.append((config, FREE_FINAL_DECAY))
    if config.final_sigma == "zero" and config.method == "multistep":
        policies.append((config.with_options(lower_order_final=False, final_decay=0.0), FREE_FINAL_SIGMA))
    return policies


def _policies_from(config: SolverConfig, rank: int) -> list[tuple[SolverConfig, str | None]]:
    """The policies searched from the rank-th best stock grid: all from the best; from the others those
    that search more than the grid (or, where there is none, the last)."""
    policies = final_policies(config)
    return policies if rank == 0 else [p for p in policies if p[1] is not None] or policies[-1:]


@dataclass
class _Setup:
    model: Denoiser
    base: SolverConfig  # the model's schedule, the typed options, the steps the budget allows
    train: Objective
    held_out: Objective
    notes: list[str]


def _setup(spec: TuneSpec) -> _Setup:
    """Load the model, fit the budget, draw both sets of x_T; ConfigError before any work."""
    if spec.train_seed == spec.seed:
        raise ConfigError(f"--train-seed: {spec.train_seed} is the held-out --seed too; tuning must be scored on other x_T")
    for option, value in (("--batch", spec.batch), ("--train-batch", spec.train_batch)):
        if value is not None and value < 2:
            raise ConfigError(f"{option}: {value} is not allowed; give at least 2 samples")
    if spec.base.compat != "none":
        raise ConfigError(f"--compat: {spec.base.compat} reproduces another library's grids, which take no tuned sigmas; tune without --compat")
    if spec.loss not in LOSSES:
        raise bad_choice("loss", spec.loss, tuple(LOSSES))
    if spec.evaluations is not None and spec.evaluations < 10:
        raise ConfigError(f"--evaluations: {spec.evaluations} is not allowed; give at least 10")
    if spec.reference_steps is not None and spec.reference_steps < 10:
        raise ConfigError(f"--reference-steps: {spec.reference_steps} is not allowed; use at least 10")
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    model = load_model(spec.model, device=device, dtype=dtype, guidance_scale=spec.guidance_scale, **spec.conditioning)
    base, notes = apply_model_schedule(spec.base, model.schedule_options, spec.explicit, model=spec.model)
    base = steps_for_budget(base, spec.nfe)
    plan = build_plan(base)
    if plan.nfe != spec.nfe:
        notes.append(f"--nfe {spec.nfe}: this method's grids spend {plan.nfe} model calls at most ({plan.steps} steps)")
    kind = "mixture" if model.mixture is not None else "network"
    reference_steps = spec.reference_steps or (MIXTURE_REFERENCE_STEPS if kind == "mixture" else NETWORK_REFERENCE_STEPS)
    shape = tuple(model.sample_shape)
    latent = model.latent_dtype or dtype
    held_batch = spec.batch or model.compare_batch
    train_batch = spec.train_batch or TRAIN_BATCH[kind]
    check_batch_memory(model, max(held_batch, train_batch), device)
    sigma = plan.schedule.init_noise_sigma
    train_x = initial_latents(spec.train_seed, (train_batch, *shape), device, latent, sigma)
    held_x = initial_latents(spec.seed, (held_batch, *shape), device, latent, sigma)
    objectives = [Objective(model, x, seed, spec, reference_steps) for x, seed in ((train_x, spec.train_seed), (held_x, spec.seed))]
    return _Setup(model, base, *objectives, list(model.notes) + notes)


def stock_configs(base: SolverConfig) -> list[tuple[str, SolverConfig]]:
    """The stock grids for base's solver and steps: (spacing, config) for each one the config accepts."""
    out = []
    for spacing in STOCK_SPACINGS[base.process]:
        config = base.with_options(spacing=spacing)
        try:
            build_plan(config)
        except ConfigError:
            continue
        out.append((spacing, config))
    return out


def tune(spec: TuneSpec, progress: Callable[[int, int], None] | None = None) -> TuneResult:
    """Search the grid on the training x_T; score it and every stock grid on the held-out x_T.

    ``progress(done, total)`` hears of every loss evaluation (the total is the most the search may use).
    """
    start = time.perf_counter()
    setup = _setup(spec)
    stock = [Scored(spacing, config, setup.train.loss(config)) for spacing, config in stock_configs(setup.base)]
    finite = sorted((s for s in stock if math.isfinite(s.train_error)), key=lambda s: s.train_error)
    if not finite:
        raise NumericalError("every stock grid of this solver fails on the training x_T (NaN or Inf); nothing to start from")
    # every final-step policy from the best stock grid; from the next, those that search more than the grid
    searches = [(policy, s, free) for rank, s in enumerate(finite[:STARTS]) for policy, free in _policies_from(s.config, rank)]
    budget = spec.evaluations or DEFAULT_EVALUATIONS["mixture" if setup.model.mixture is not None else "network"]
    total = budget * len(searches)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(min(done[0], total), total)

    best: Scored | None = None
    for policy, start_point, free in searches:
        grid = Grid(build_plan(policy.with_options(spacing=start_point.config.spacing)), free=free)
        theta = grid.theta_of(grid.plan)
        if theta is None or grid.steps < 2:
            continue
        target = grid.plan if grid.free_final else None
        theta, error = _search(setup.train, grid, policy, theta, budget=budget, tick=tick, target=target)
        if best is None or error < best.train_error:
            config = grid.config(policy, theta)
            how = free or f"lower-order-final {'on' if policy.lower_order_final else 'off'}"
            if free == FREE_FINAL_DECAY:
                how += f" {config.final_decay:.2g}"
            best = Scored(f"tuned (from {start_point.label}, {how})", config, error, target=target)
    if progress is not None:
        progress(total, total)
    if best is None or best.train_error >= finite[0].train_error:
        # nothing beat the best stock grid on the training set (one step, or a search that found no better point)
        kept = finite[0].config
        tuned = Scored(f"tuned (kept {finite[0].label})", kept.with_options(sigmas=tuple(float(s) for s in build_plan(kept).sigmas)),
                       finite[0].train_error)
        setup.notes.append("the search found no grid better than the best stock grid on the training x_T; the recipe keeps it")
    else:
        tuned = best
    for scored in [*stock, tuned]:
        scored.held_out_error, scored.quality = setup.held_out.score(scored.config, scored.target)
    stock.sort(key=lambda s: s.held_out_error if s.held_out_error is not None else math.inf)
    default = next((s for s in stock if s.config.spacing == setup.base.spacing), None)
    if default is None:  # the typed grid is not a stock one (a custom grid): score it as given
        default = Scored(setup.base.spacing, setup.base, setup.train.loss(setup.base))
        default.held_out_error, default.quality = setup.held_out.score(default.config)
    metric = "mmd2" if setup.base.is_sde and setup.model.mixture is not None else "l2_median"
    recipe = _recipe(spec, setup, tuned, default, stock, metric)
    return TuneResult(recipe, tuned, default, stock, metric, done[0], time.perf_counter() - start, setup.notes)


def _recipe(spec: TuneSpec, setup: _Setup, tuned: Scored, default: Scored, stock: list[Scored], metric: str) -> Recipe:
    plan = build_plan(tuned.config)
    return Recipe(
        model=spec.model,
        model_identity=setup.model.identity() if setup.model.mixture is None else None,
        process=plan.config.process,
        nfe=plan.nfe,
        config=plan.config,
        timesteps=tuple(float(t) for t in plan.timesteps),
        guidance_scale=spec.guidance_scale,
        conditioning={k: v for k, v in spec.conditioning.items() if v is not None and v is not False},
        metric=metric,
        target_sigma=float((tuned.target or plan).sigmas[-1]),
        training={"seed": spec.train_seed, "batch": int(setup.train.x_T.shape[0]), "error": tuned.train_error,
                  "loss": "mmd2" if metric == "mmd2" else f"l2_{spec.loss}"},
        held_out={"seed": spec.seed, "batch": int(setup.held_out.x_T.shape[0]), "error": tuned.held_out_error,
                  **({"quality": tuned.quality} if tuned.quality else {})},
        baselines={"default": default.to_dict(), "best_stock": stock[0].to_dict()},
        format=RECIPE_FORMAT,
    )


__all__ = ["TuneSpec", "TuneResult", "Scored", "tune", "steps_for_budget", "stock_configs", "STOCK_SPACINGS"]
