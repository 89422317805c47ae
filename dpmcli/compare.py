"""Sweeps: many solvers on the same x_T (and Brownian path) against ground truth; orders; gates.

A sweep is the cartesian product of lists of solver options. Every run shares x_T and, for
SDE runs, one Brownian path (so runs with different step counts see increments of the same
path). Ground truth for the mixtures:

* ODE algorithms: the exact probability-flow ODE solution from the same x_T (DOP853, rtol
  1e-10, cached on disk); error = median per-sample L2 distance, also the maximum and the
  share of samples ending in another mixture component (mode flips);
* SDE algorithms: the distribution itself, via MMD^2 against the exact mixture (Gaussian
  kernel, bandwidth stated), the mean log-likelihood against its exact expectation, and the
  strong error against a fine-step solution of the same SDE on the same Brownian path.

Nothing here prints; the command line renders the report.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import ALGOS, COEFFICIENTS, COMPAT, FINAL_SIGMAS, METHODS, SOLVER_TYPES, SPACINGS, STARTUPS, SolverConfig
from .devices import check_batch_memory, resolve_device, resolve_dtype
from .errors import ConfigError, NumericalError, bad_choice
from .models import Denoiser, MixtureModel, load_model
from .noise import initial_latents
from .plan import Plan, build_plan
from .reference import CacheDirError, ReferenceCache, check_cache_dir, default_cache_dir, far_lambda, ode_limit
from .experiment import run_plan
from .sampler import sample

SWEEP_FIELDS = ("algo", "order", "steps", "method", "startup", "spacing", "solver_type", "final_sigma", "coefficients", "compat")
SOLVER_FIELDS = tuple(f for f in SWEEP_FIELDS if f != "steps")
DEFAULT_SWEEP = {
    "algo": list(ALGOS),
    "order": [1, 2, 3],
    "steps": [5, 10, 20, 50],
}
REFERENCE_ORDER = 2  # the fine-step SDE reference: order 2, exact weights, logsnr grid
MIXTURE_REFERENCE_STEPS = 1000
NETWORK_REFERENCE_STEPS = 200


@dataclass
class Sweep:
    """What to run: a base config, the lists of values to sweep, and the model and inputs."""

    base: SolverConfig = field(default_factory=SolverConfig)
    values: dict = field(default_factory=dict)
    model: str = "ring"
    batch: int | None = None  # None: the model's compare_batch (4096 for the mixtures)
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    reference_steps: int | None = None  # mixtures: 1000 (fine SDE run); networks: NETWORK_REFERENCE_STEPS
    bandwidth: float | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    conditioning: dict = field(default_factory=dict)  # class_label, prompt, ... for real models
    guidance: list = field(default_factory=lambda: [None])  # guidance scales: one block of runs each
    explicit: frozenset = frozenset()  # options the user typed: they win over the model's schedule

    def axis(self, name: str) -> list:
        if name in self.values and self.values[name]:
            return list(self.values[name])
        if name in DEFAULT_SWEEP:
            return list(DEFAULT_SWEEP[name])
        return [getattr(self.base, name)]

    def to_dict(self) -> dict:
        base = self.base.to_dict()
        for name in SWEEP_FIELDS:
            base.pop(name, None)
        return {
            "sweep": {name: self.axis(name) for name in SWEEP_FIELDS},
            "base": base,
            "model": self.model,
            "batch": self.batch,
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "reference_steps": self.reference_steps,
            "bandwidth": self.bandwidth,
            **{k: v for k, v in self.conditioning.items() if v is not None and v is not False},
            **({"guidance_scale": self.guidance} if self.guidance != [None] else {}),
        }


@dataclass
class Planned:
    key: dict  # the swept values of this run
    plan: Plan


def run_label(key: dict, fields=SOLVER_FIELDS) -> str:
    parts = []
    for name in fields:
        value = key[name]
        if name == "order":
            parts.append(f"order {value}")
        elif name == "steps":
            parts.append(f"{value} steps")
        elif name == "compat":
            if value != "none":
                parts.append(f"compat {value}")
        elif name == "final_sigma":
            parts.append(f"final {value}")
        else:
            parts.append(str(value))
    return " ".join(parts)


def _fingerprint(plan: Plan) -> tuple:
    cfg = plan.config
    rows = tuple((r.order, r.anchor, r.reads, r.a, r.b, r.c, r.p, r.q) for r in plan.rows)
    # an adaptive plan has no rows: its controller settings are what tells runs apart
    method = (cfg.method, cfg.order, cfg.coefficients, cfg.atol, cfg.rtol) if cfg.method == "adaptive" else cfg.method
    return (method, tuple(plan.timesteps.tolist()), tuple(plan.sigmas.tolist()), rows)


AXIS_VALUES = {
    "algo": ALGOS, "method": METHODS, "startup": STARTUPS, "spacing": SPACINGS, "solver_type": SOLVER_TYPES,
    "final_sigma": FINAL_SIGMAS, "coefficients": COEFFICIENTS, "compat": COMPAT,
}


def check_axes(sweep: Sweep) -> None:
    """A misspelt value is a usage error, not a run to skip."""
    for name, allowed in AXIS_VALUES.items():
        for value in sweep.axis(name):
            if value not in allowed:
                raise bad_choice(f"--{name.replace('_', '-')}", value, allowed)
    for name in ("order", "steps"):
        for value in sweep.axis(name):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name}: {value!r} is not allowed; give positive integers")


def expand(sweep: Sweep) -> tuple[list[Planned], list[dict]]:
    """Every valid combination as a plan; invalid or duplicate ones are listed with a reason."""
    check_axes(sweep)
    axes = [sweep.axis(name) for name in SWEEP_FIELDS]
    planned: list[Planned] = []
    skipped: list[dict] = []
    seen: dict[tuple, str] = {}
    for combo in itertools.product(*axes):
        key = dict(zip(SWEEP_FIELDS, combo))
        label = run_label(key, SWEEP_FIELDS)
        try:
            plan = build_plan(sweep.base.with_options(**key))
        except ConfigError as exc:
            skipped.append({"run": label, **key, "reason": str(exc)})
            continue
        fingerprint = _fingerprint(plan)
        if fingerprint in seen:
            skipped.append({"run": label, **key, "reason": f"identical to {seen[fingerprint]}"})
            continue
        seen[fingerprint] = label
        planned.append(Planned(key, plan))
    if not planned:
        reasons = sorted({s["reason"] for s in skipped})
        raise ConfigError(f"compare: no valid run in the sweep ({'; '.join(reasons)[:300]})")
    return planned, skipped


@dataclass
class SweepReport:
    sweep: Sweep
    runs: list[dict]
    skipped: list[dict]
    orders: list[dict]
    reference: dict
    samples: dict  # run label -> final samples (CPU numpy), for plots
    mixture: object
    seconds: float
    model: Denoiser | None = None
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # found while running (a damaged or unwritable cache), one line each

    @property
    def quality_columns(self) -> dict:
        """The model's quality numbers worth a column, with their headers (none for the mixtures)."""
        return {} if self.mixture is not None or self.model is None else dict(self.model.quality_columns)

    def document(self) -> dict:
        config = self.sweep.to_dict()
        if self.model is not None:
            config["model_info"] = self.model.describe()
            if self.sweep.guidance != [None]:
                config["model_info"]["guidance_scale"] = list(self.sweep.guidance)  # one block per scale
        return {
            "config": config,
            "runs": self.runs,
            "skipped": self.skipped,
            "orders": self.orders,
            "reference": self.reference,
            "seconds": self.seconds,
            "warnings": list(dict.fromkeys([*self.notes, *self.warnings])),
        }


def _median_l2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    distance = (a.double() - b.double()).reshape(a.shape[0], -1).norm(dim=1)
    return distance.median().item(), distance.max().item()


class _MixtureReferences:
    """Ground truth of a sweep, computed once per distinct (kind, lambda range) and cached on disk."""

    def __init__(self, sweep: Sweep, mixture, x_T: torch.Tensor, cache_writable: bool = True):
        self.sweep, self.mixture, self.x_T = sweep, mixture, x_T.detach().double().cpu()
        self.reference_steps = sweep.reference_steps or MIXTURE_REFERENCE_STEPS
        self.cache = ReferenceCache(sweep.cache_dir, writable=cache_writable)
        self.expect = dict(shape=tuple(self.x_T.shape), dtype=np.float64)  # what a cached reference must be
        self.memory: dict = {}
        self.fine_plans: dict = {}
        self._arrays = (mixture.weights, mixture.means, mixture.stds, self.x_T.numpy())

    def ode(self, plan: Plan) -> torch.Tensor:
        lam0, lam1 = float(plan.lambdas[0]), float(plan.lambdas[-1])
        description = {"kind": "ode", "lambda_start": lam0, "lambda_end": lam1, "rtol": 1e-10, "method": "DOP853"}
        if not math.isfinite(lam1):
            description["lambda_far"] = far_lambda(self.mixture, lam0)
        key = ("ode", lam0, lam1)
        if key not in self.memory:
            self.memory[key] = self.cache.get_or_compute(
                description, self._arrays, lambda: ode_limit(self.mixture, self.x_T, lam0, lam1), **self.expect
            )
        return self.memory[key]

    def sde(self, plan: Plan, noise_for: Callable) -> torch.Tensor:
        cfg = plan.config
        fine_cfg = cfg.with_options(
            order=REFERENCE_ORDER, coefficients="exact", steps=self.reference_steps, spacing="logsnr",
            lower_order_final=False, euler_at_final=False, compat="none", sigmas=None, timesteps=None, method="multistep",
            startup="lower-order", nfe=None, final_sigma="zero" if plan.sigmas[-1] == 0 else "sigma-min",
        )
        if fine_cfg not in self.fine_plans:
            self.fine_plans[fine_cfg] = build_plan(fine_cfg)
        fine = self.fine_plans[fine_cfg]
        lam0, lam1 = float(fine.lambdas[0]), float(fine.lambdas[-1])
        from .brownian import PATH_VERSION

        description = {
            "kind": "sde", "path_version": PATH_VERSION, "seed": self.sweep.seed,
            "lambda_start": lam0, "lambda_end": lam1, "config": fine_cfg.to_dict(),
            "trained_betas": None if cfg.trained_betas is None else list(cfg.trained_betas),
        }
        key = ReferenceCache.key(description)
        if key not in self.memory:

            def compute():
                model = MixtureModel(self.mixture)
                model.bind(fine)
                return sample(fine, model, self.x_T.clone(), noise_for(fine)).samples

            self.memory[key] = self.cache.get_or_compute(description, self._arrays, compute, **self.expect)
        return self.memory[key]


    def score(self, plan: Plan, final: torch.Tensor, noise_for: Callable) -> dict:
        from .metrics import log_likelihood_gap, mmd2_to_mixture, mode_flips

        row = {"log_likelihood_gap": log_likelihood_gap(final, self.mixture)["gap"]}
        if plan.config.is_sde:
            row["mmd2"] = mmd2_to_mixture(final, self.mixture, self.bandwidth)["mmd2"]
            reference = self.sde(plan, noise_for)
            row["strong_error"] = _median_l2(final, reference)[0]
            row["error"], row["error_metric"] = row["mmd2"], "mmd2"
        else:
            reference = self.ode(plan)
            row["error"], row["error_max"] = _median_l2(final, reference)
            row["error_metric"] = "l2_median"
        row["mode_flips"] = mode_flips(final, reference, self.mixture)
        return row

    def describe(self) -> dict:
        return {
            "kind": "exact",
            "ode": "exact probability-flow ODE solution from the same x_T (scipy DOP853, rtol 1e-10); "
            "error = median per-sample L2 distance",
            "sde": f"distribution: MMD^2 against the exact mixture (Gaussian kernel, bandwidth {self.bandwidth:.6g}); "
            f"strong error: median L2 distance to a {self.reference_steps}-step order-{REFERENCE_ORDER} exact-weight "
            "solution of the same SDE on the same Brownian path",
            "bandwidth": self.bandwidth,
            "reference_steps": self.reference_steps,
            "cache": None if self.sweep.cache_dir is None else str(self.sweep.cache_dir),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
        }


class _ReferenceRuns:
    """Ground truth for a network, which has no exact answer: reference runs of the same model.

    ODE runs are measured against a many-step run of an exact-weight third-order solver (with
    the singlestep start-up, so it keeps order 3) from the same x_T over the same lambda range;
    SDE runs against a many-step order-2 exact-weight run of the same SDE on the same Brownian
    path. Both grids are uniform in lambda. They are computed in this process, not cached on
    disk (a network's identity is not hashed).
    """

    def __init__(self, sweep: Sweep, model: Denoiser, x_T: torch.Tensor, steps: int):
        self.sweep, self.model, self.x_T, self.steps = sweep, model, x_T, steps
        self.memory: dict = {}
        self.nfe = 0

    def _grid(self, plan: Plan) -> tuple[float, ...]:
        first, last = float(plan.sigmas[0]), float(plan.sigmas[-1])
        # sigma 0 is lambda = inf: go uniformly to the schedule's smallest sigma, then one step to 0
        low = last if last > 0 else float(np.exp(-np.max(plan.schedule.lambdas[np.isfinite(plan.schedule.lambdas)])))
        points = self.steps + 1 if last > 0 else self.steps
        sigmas = np.exp(-np.linspace(-np.log(first), -np.log(low), points))
        return tuple(float(v) for v in sigmas) + (() if last > 0 else (0.0,))

    def _run(self, key: tuple, config: SolverConfig, noise_for: Callable | None) -> torch.Tensor:
        key = (*key, self.model.guidance_scale)
        if key not in self.memory:
            fine = build_plan(config)
            self.model.bind(fine)
            result = run_plan(fine, self.model, self.x_T.clone(), None if noise_for is None else noise_for(fine))
            self.nfe += result.nfe
            self.memory[key] = result.samples.detach().double().cpu()
        return self.memory[key]

    def reference(self, plan: Plan, noise_for: Callable) -> torch.Tensor:
        cfg = plan.config
        grid = self._grid(plan)
        common = dict(sigmas=grid, timesteps=None, steps=len(grid) - 1, coefficients="exact", method="multistep", compat="none",
                      lower_order_final=False, euler_at_final=False, nfe=None)
        if cfg.is_sde:
            fine = cfg.with_options(order=REFERENCE_ORDER, startup="lower-order", **common)
            return self._run(("sde", cfg.algo, grid), fine, noise_for)
        fine = cfg.with_options(algo="dpmsolver++", order=3, startup="singlestep", **common)
        return self._run(("ode", grid), fine, None)

    def score(self, plan: Plan, final: torch.Tensor, noise_for: Callable) -> dict:
        reference = self.reference(plan, noise_for)
        self.model.bind(plan)
        error, worst = _median_l2(final, reference)
        row = {"error": error, "error_max": worst, "error_metric": "l2_median_vs_reference"}
        if plan.config.is_sde:
            row["strong_error"] = error
        return row

    def describe(self) -> dict:
        return {
            "kind": "reference run",
            "ode": f"reference run: {self.steps}-step dpmsolver++ order 3 (exact weights, singlestep start-up, uniform "
            "in lambda) of the same model from the same x_T; error = median per-sample L2 distance",
            "sde": f"reference run: {self.steps}-step order-{REFERENCE_ORDER} exact-weight solution of the same SDE on the "
            "same Brownian path; error = median per-sample L2 distance (strong error)",
            "reference_steps": self.steps,
            "reference_nfe": self.nfe,
            "cache": None,
        }


@dataclass
class PreparedSweep:
    """A sweep with its model loaded and its runs planned on the model's schedule."""

    sweep: Sweep
    model: Denoiser
    planned: list
    skipped: list
    notes: list[str]
    device: torch.device
    dtype: torch.dtype
    cache_writable: bool = True


def prepare_sweep(sweep: Sweep) -> PreparedSweep:
    """Check the numbers, load the model, plan every run; ConfigError before any sampling."""
    from .experiment import apply_model_schedule

    if sweep.batch is not None and sweep.batch < 2:
        raise ConfigError(f"--batch: {sweep.batch} is not allowed; compare needs at least 2 samples")
    if sweep.reference_steps is not None and sweep.reference_steps < 10:
        raise ConfigError(f"--reference-steps: {sweep.reference_steps} is not allowed; use at least 10")
    if sweep.bandwidth is not None and not (math.isfinite(sweep.bandwidth) and sweep.bandwidth > 0):
        raise ConfigError(f"--bandwidth: {sweep.bandwidth} is not allowed; it must be a positive number")
    for scale in sweep.guidance:
        if scale is not None and not (math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"--guidance-scale: {scale} is not allowed; give numbers >= 0")
    check_axes(sweep)
    device = resolve_device(sweep.device)
    dtype = resolve_dtype(sweep.dtype, device)
    scales = [g for g in sweep.guidance if g is not None]
    # loaded with the largest scale, so that whatever guidance needs (negative prompts) is prepared
    if "guidance_scale" in sweep.conditioning:
        raise ConfigError("Sweep: give guidance scales as Sweep.guidance, not in conditioning")
    model = load_model(sweep.model, device=device, dtype=dtype, guidance_scale=max(scales) if scales else None, **sweep.conditioning)
    reference_steps = sweep.reference_steps or (MIXTURE_REFERENCE_STEPS if model.mixture is not None else NETWORK_REFERENCE_STEPS)
    if model.mixture is not None and reference_steps > sweep.base.train_steps:
        raise ConfigError(
            f"--reference-steps: {reference_steps} is more than --train-steps ({sweep.base.train_steps}); use at most that"
        )
    unwritable = None
    if model.mixture is not None and sweep.cache_dir is not None:
        try:
            unwritable = check_cache_dir(sweep.cache_dir)
        except CacheDirError as exc:
            raise ConfigError(f"--cache-dir: {exc}; give a folder for reference solutions, or --no-cache") from None
    base, notes = apply_model_schedule(sweep.base, model.schedule_options, sweep.explicit)
    batch = sweep.batch or model.compare_batch
    check_batch_memory(model, batch, device)
    # the report says what ran: the resolved batch and device (not "auto")
    sweep = replace(sweep, base=base, reference_steps=reference_steps, batch=batch, device=str(device))
    planned, skipped = expand(sweep)
    notes = list(model.notes) + notes
    if unwritable:
        notes.append(f"--cache-dir: {unwritable}")
    # what each plan says about its grid (fewer steps than asked, ...), once per distinct message
    notes += list(dict.fromkeys(w for item in planned for w in item.plan.warnings))
    return PreparedSweep(sweep, model, planned, skipped, notes, device, dtype, unwritable is None)


def run_sweep(sweep: Sweep | PreparedSweep, on_run: Callable[[str], None] | None = None) -> SweepReport:
    """Run every valid combination; returns the report (rows sorted by error within each kind)."""
    from .brownian import BrownianNoise
    from .metrics import default_bandwidth

    start = time.perf_counter()
    prepared = sweep if isinstance(sweep, PreparedSweep) else prepare_sweep(sweep)
    sweep, model = prepared.sweep, prepared.model
    mixture = model.mixture
    shape = (sweep.batch, *model.sample_shape)
    x_T = initial_latents(sweep.seed, shape, prepared.device, model.latent_dtype or prepared.dtype)
    if mixture is not None:
        references = _MixtureReferences(sweep, mixture, x_T, prepared.cache_writable)
        references.bandwidth = default_bandwidth(mixture) if sweep.bandwidth is None else float(sweep.bandwidth)
    else:
        references = _ReferenceRuns(sweep, model, x_T, sweep.reference_steps)
    trees: dict = {}

    def noise_for(plan: Plan):
        return BrownianNoise.shared(sweep.seed, plan, shape, trees)

    # Labels name the algorithm, the order and whatever else the sweep varies.
    shown = tuple(f for f in SOLVER_FIELDS if f in ("algo", "order") or len(sweep.axis(f)) > 1)
    runs: list[dict] = []
    samples: dict = {}
    default_scale = model.guidance_scale
    try:
        for scale in sweep.guidance:
            if scale is not None:
                model.guidance_scale = scale
            _run_block(sweep, prepared, model, scale, shown, x_T, references, noise_for, runs, samples, on_run)
    finally:
        model.guidance_scale = default_scale  # the loaded model is left as it came
    _mark_best(runs)
    # each guidance block has its own references: its runs stay together, in the order of the scales
    block = {scale: i for i, scale in reversed(list(enumerate(sweep.guidance)))}
    runs.sort(key=lambda r: (block.get(r.get("guidance_scale"), 0), r["kind"], math.inf if r.get("error") is None else r["error"]))
    orders = fit_orders(runs)
    warnings = list(references.cache.warnings) if mixture is not None else []
    return SweepReport(sweep, runs, prepared.skipped, orders, references.describe(), samples, mixture, time.perf_counter() - start,
                       model=model, notes=prepared.notes, warnings=warnings)


def _run_block(sweep, prepared, model, scale, shown, x_T, references, noise_for, runs, samples, on_run) -> None:
    """Every planned run at one guidance scale (None: the model's own)."""
    mixture = model.mixture
    for item in prepared.planned:
        plan, key = item.plan, item.key
        ran = key["steps"] if plan.config.method == "adaptive" else plan.steps  # a grid may hold fewer steps than asked
        label = run_label({**key, "steps": ran}, shown + ("steps",))
        if len(sweep.guidance) > 1:
            label = f"{label} cfg {scale:g}"
        solver = run_label(key, shown) + (f" cfg {scale:g}" if len(sweep.guidance) > 1 else "")
        row = {"run": label, "solver": solver, **key, "nfe": plan.nfe, "kind": "sde" if plan.config.is_sde else "ode",
               "convergence_order": plan.convergence_order, "status": "ok"}
        if ran != key["steps"]:
            row["steps"], row["steps_requested"] = ran, key["steps"]
        if scale is not None:
            row["guidance_scale"] = scale
        model.bind(plan)
        try:
            result = run_plan(plan, model, x_T.clone(), noise_for(plan) if plan.config.is_sde else None)
        except NumericalError as exc:
            row.update({"status": "nan", "message": str(exc), "error": None, "seconds": None})
            runs.append(row)
            if on_run:
                on_run(label)
            continue
        final = result.samples.detach().double().cpu()
        row["seconds"] = result.seconds
        row["nfe"] = result.nfe
        row.update(references.score(plan, final, noise_for))
        if mixture is None:
            row.update(_scalar_quality(model.quality(result.samples)))
        broken = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v) and k != "seconds"]
        if broken:  # finite samples, non-finite scores: never a number that reads as a result
            row.update({k: None for k in broken})
            row.update({"status": "nan", "error": None, "message": f"non-finite {', '.join(broken)} from finite samples"})
        samples[label] = final.numpy()
        runs.append(row)
        if on_run:
            on_run(label)


def _scalar_quality(quality: dict) -> dict:
    """The model's scalar quality numbers, as run columns (lists such as class shares stay out)."""
    return {key: value for key, value in quality.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _mark_best(runs: list[dict]) -> None:
    best: dict = {}
    for row in runs:
        if row.get("error") is None:
            continue
        slot = (row["kind"], row["nfe"], row.get("guidance_scale"))
        if slot not in best or row["error"] < best[slot]["error"]:
            best[slot] = row
    for row in runs:
        row["best_at_nfe"] = any(row is b for b in best.values())


def fit_orders(runs: list[dict]) -> list[dict]:
    """Per solver: the slope of log error against log NFE over the sweep (ODE: L2 error; SDE: strong error)."""
    groups: dict = {}
    for row in runs:
        groups.setdefault((row["kind"], row["solver"]), []).append(row)
    out = []
    for (kind, solver), rows in sorted(groups.items()):
        metric = "strong_error" if kind == "sde" else "error"
        points = sorted((r["nfe"], r.get(metric)) for r in rows if r.get(metric) is not None and r.get(metric) > 0)
        nfes = sorted({n for n, _ in points})
        entry = {
            "solver": solver, "kind": kind, "metric": metric, "points": len(points),
            "algo": rows[0]["algo"], "order": rows[0]["order"], "coefficients": rows[0]["coefficients"],
            "nominal_order": rows[0]["order"],
            # the ODE order the weights reach; an SDE's strong order is what the sweep measures
            "expected_order": rows[0]["convergence_order"] if kind == "ode" else None,
            "fitted_order": None,
        }
        if len(nfes) >= 2:
            x = np.log([n for n, _ in points])
            y = np.log([e for _, e in points])
            entry["fitted_order"] = float(-np.polyfit(x, y, 1)[0])
        out.append(entry)
    return out


# ---------------------------------------------------------------- gates


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_gates(report: SweepReport, max_error=None, baseline: dict | None = None, tolerance: float = 0.1, min_order=None) -> tuple[list[str], list[str]]:
    """(failures, notes): each failure names the run and by how much.

    Against a baseline, runs match on their solver options, requested steps and guidance scale;
    baseline runs without a finite error are ignored (one note lists them), and a baseline of
    which no run matches a run of this sweep fails: it guards nothing.
    """
    failures: list[str] = []
    notes: list[str] = []
    if max_error is not None:
        for row in report.runs:
            error = row.get("error")
            if not _finite(error):
                failures.append(f"{row['run']}: no error value ({row['status']}) against --max-error {max_error:g}")
            elif error > max_error:
                failures.append(f"{row['run']}: {row['error_metric']} {error:.4g} > --max-error {max_error:g} (x{error / max_error:.2f})")
    if baseline is not None:
        old: dict = {}
        ignored: dict = {}  # baseline runs without a usable error, by key
        for r in baseline.get("runs", []):
            if _finite(r.get("error")):
                old[_baseline_key(r)] = r
            else:
                ignored[_baseline_key(r)] = str(r.get("run", "?"))
        if ignored:
            names = list(ignored.values())
            shown = "; ".join(names[:5]) + (f"; ... ({len(names) - 5} more)" if len(names) > 5 else "")
            notes.append(f"baseline: {len(ignored)} run(s) without a finite error are ignored: {shown}")
        new = {_baseline_key(r): r for r in report.runs}
        matched = 0
        for key, row in new.items():
            if key not in old:
                if key not in ignored:  # (those are in the note above)
                    notes.append(f"{row['run']}: not in the baseline")
                continue
            matched += 1
            before, after = old[key]["error"], row.get("error")
            if not _finite(after):
                failures.append(f"{row['run']}: no error value ({row['status']}), baseline {before:.4g}")
            elif after - before > tolerance * abs(before) + 1e-15:
                # relative to |baseline|: MMD^2 is unbiased and may be negative
                worse = (after - before) / abs(before) if before != 0 else math.inf
                failures.append(
                    f"{row['run']}: {row['error_metric']} {after:.4g} vs baseline {before:.4g} "
                    f"({worse:+.1%} of the baseline's size, tolerance {tolerance:.0%})"
                )
        for key, row in old.items():
            if key not in new:
                notes.append(f"{row.get('run', key)}: in the baseline but not in this sweep")
        if not matched:
            failures.append(
                f"--baseline: no run of the baseline matches a run of this sweep ({len(old)} baseline run(s) with an "
                f"error, {len(new)} run(s) now; runs match on their solver options, steps and guidance scale)"
            )
    if min_order is not None:
        for entry in report.orders:
            fitted = entry["fitted_order"]
            if fitted is None:
                notes.append(f"{entry['solver']}: fewer than two step counts, no fitted order for --min-order")
            elif fitted < min_order:
                failures.append(f"{entry['solver']}: fitted order {fitted:.2f} < --min-order {min_order:g} (short by {min_order - fitted:.2f})")
    return failures, notes


def _baseline_key(row: dict) -> tuple:
    """What makes two runs the same run: the swept values (steps as asked) and the guidance scale."""
    values = {**row, "steps": row.get("steps_requested", row.get("steps"))}
    return tuple(str(values.get(f)) for f in (*SWEEP_FIELDS, "guidance_scale"))
