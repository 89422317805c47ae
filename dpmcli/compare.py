"""Sweeps: many solvers on the same x_T (and Brownian path) against ground truth; orders; gates.

A sweep is the cartesian product of lists of solver options. Every run shares x_T and, for
SDE runs, one Brownian path (so runs with different step counts see increments of the same
path). What a run is scored against (the exact ODE solution and distribution of a mixture, or
reference runs of a network) is in ``ground_truth.py``; how a report is written (CSV, Markdown,
the ``--out`` folder) in ``export.py``. Each run calls ``model.bind(plan, guidance_scale)``: the
loaded model is never changed, so results do not depend on the order of the runs.

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

from .brownian import BrownianNoise
from .config import ALGOS, COEFFICIENTS, COMPAT, FINAL_SIGMAS, METHODS, SOLVER_TYPES, SPACINGS, STARTUPS, SolverConfig, sde_noise_ok
from .devices import check_batch_memory, resolve_device, resolve_dtype
from .distributed import SINGLE, Ranks, run_split
from .errors import ConfigError, NumericalError, bad_choice
from .experiment import apply_model_schedule, run_plan
from .ground_truth import MIXTURE_REFERENCE_STEPS, NETWORK_REFERENCE_STEPS, MixtureReferences, ReferenceRuns
from .metrics import default_bandwidth
from .models import Denoiser, load_model
from .noise import initial_latents
from .plan import Plan, build_plan
from .peers import build_scheduler, grid_sigmas, peers_beside, peers_identity, reference_plan, run_peer
from .recipe import check_recipe_identity, check_recipe_model, target_config
from .sampler import RunResult
from .reference import CacheDirError, check_cache_dir, default_cache_dir

SWEEP_FIELDS = ("algo", "order", "steps", "method", "startup", "spacing", "solver_type", "final_sigma", "coefficients", "compat")
SOLVER_FIELDS = tuple(f for f in SWEEP_FIELDS if f != "steps")
# swept too, but a run's key (row, label, baseline identity) names them only where they differ from these
NOISE_DEFAULTS = {"eta": None, "s_noise": 1.0}
CORRECTOR_DEFAULT = "none"  # --corrector: swept over the ODE runs, named in a key where a run is corrected
DEFAULT_SWEEP = {
    "algo": list(ALGOS),
    "order": [1, 2, 3],
    "steps": [5, 10, 20, 50],
}


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
    recipes: list = field(default_factory=list)  # recipe.Recipe: each one more run (dpmcli tune's grids)
    peers: str | None = None  # "diffusers": runs of diffusers' other schedulers beside (dpmcli.peers)

    def axis(self, name: str) -> list:
        if name in self.values and self.values[name]:
            return list(self.values[name])
        if name in DEFAULT_SWEEP:
            return list(DEFAULT_SWEEP[name])
        return [getattr(self.base, name)]

    def noise_keys(self) -> list[dict]:
        """Every combination of the swept --eta and --s-noise, each as the key entries that differ from the defaults."""
        axes = [[(name, value) for value in self.axis(name)] for name in NOISE_DEFAULTS]
        return [{name: value for name, value in combo if value != NOISE_DEFAULTS[name]} for combo in itertools.product(*axes)]

    def corrector_keys(self, config: SolverConfig) -> list[dict]:
        """The --corrector values a combination runs with (ODE runs only), each as its key entries."""
        values = list(self.values.get("corrector") or [CORRECTOR_DEFAULT]) if not config.is_sde else [CORRECTOR_DEFAULT]
        return [{} if value == CORRECTOR_DEFAULT else {"corrector": value} for value in values]

    def to_dict(self) -> dict:
        base = self.base.to_dict()
        noise = {name: self.axis(name) for name in NOISE_DEFAULTS if self.axis(name) != [NOISE_DEFAULTS[name]]}
        if self.values.get("corrector") and self.values["corrector"] != [CORRECTOR_DEFAULT]:
            noise["corrector"] = list(self.values["corrector"])
        for name in (*SWEEP_FIELDS, *noise):
            base.pop(name, None)
        return {
            "sweep": {**{name: self.axis(name) for name in SWEEP_FIELDS}, **noise},
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
            **({"recipes": [{"path": r.path, "sha256": r.digest} for r in self.recipes]} if self.recipes else {}),
            **({"peers": peers_identity(self.peers)} if self.peers else {}),
        }


@dataclass
class Planned:
    key: dict  # the swept values of this run
    plan: Plan
    reference: Plan | None = None  # scored over this plan's lambda range, where not its own (a recipe's searched final sigma)


def run_label(key: dict, fields=SOLVER_FIELDS) -> str:
    parts = [f"recipe {key['recipe']}:"] if key.get("recipe") else []
    for name in fields:
        value = key.get(name, NOISE_DEFAULTS.get(name))
        if name in NOISE_DEFAULTS:
            if value != NOISE_DEFAULTS[name]:
                parts.append(f"{name} {value:g}")
        elif name == "order":
            parts.append(f"order {value}")
        elif name == "steps":
            parts.append(f"{value} steps")
        elif name == "compat":
            if value != "none":
                parts.append(f"compat {value}")
        elif name == "corrector":
            if value not in (None, CORRECTOR_DEFAULT):
                parts.append(value)
        elif name == "final_sigma":
            parts.append(f"final {value}")
        else:
            parts.append(str(value))
    return " ".join(parts)


def _fingerprint(plan: Plan) -> tuple:
    cfg = plan.config
    rows = tuple((r.order, r.anchor, r.reads, r.a, r.b, r.c, r.p, r.q, r.correction) for r in plan.rows)
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
    for name, allowed in (("eta", "numbers >= 0"), ("s_noise", "positive numbers")):
        for value in (v for v in sweep.axis(name) if v is not None and not sde_noise_ok(name, v)):
            raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not allowed; give {allowed}")


def expand(sweep: Sweep) -> tuple[list[Planned], list[dict]]:
    """Every valid combination as a plan; invalid or duplicate ones are listed with a reason."""
    check_axes(sweep)
    axes = [sweep.axis(name) for name in SWEEP_FIELDS]
    planned: list[Planned] = []
    skipped: list[dict] = []
    seen: dict[tuple, str] = {}
    noise_keys = sweep.noise_keys()
    combos = []
    for c in itertools.product(*axes):  # --eta and --s-noise apply to the stochastic runs only, --corrector to the others
        config = sweep.base.with_options(**dict(zip(SWEEP_FIELDS, c)))
        combos += [(c, {**n, **k}) for n in (noise_keys if config.is_sde else [{}]) for k in sweep.corrector_keys(config)]
    for combo, noise in combos:
        key = {**dict(zip(SWEEP_FIELDS, combo)), **noise}
        label = run_label(key, SWEEP_FIELDS + tuple(NOISE_DEFAULTS) + ("corrector",))
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


def recipe_runs(sweep: Sweep, model: Denoiser) -> list[Planned]:
    """One run per --recipe, on its own config (its grid, solver and final-step policy), keyed by the recipe's name."""
    out = []
    for recipe in sweep.recipes:
        check_recipe_model(recipe, sweep.model, typed_model=True)
        check_recipe_identity(recipe, model.identity() if recipe.model_identity is not None else None)
        if recipe.process != sweep.base.process:
            raise ConfigError(f"--recipe: {recipe.path} is for --process {recipe.process}; this sweep runs --process {sweep.base.process}")
        plan = build_plan(recipe.config)
        corrector = {"corrector": plan.config.corrector} if plan.config.corrector != CORRECTOR_DEFAULT else {}
        out.append(Planned({**{f: getattr(plan.config, f) for f in SWEEP_FIELDS}, **corrector, "recipe": recipe.name}, plan,
                           build_plan(target_config(recipe))))
    return out


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
    peers: list = field(default_factory=list)  # (peers.Peer, the config of the dpmcli runs it stands beside)


def prepare_sweep(sweep: Sweep) -> PreparedSweep:
    """Check the numbers, load the model, plan every run; ConfigError before any sampling."""
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
    if model.mixture is not None and sweep.base.process == "vp" and reference_steps > sweep.base.train_steps:
        raise ConfigError(
            f"--reference-steps: {reference_steps} is more than --train-steps ({sweep.base.train_steps}); use at most that"
        )
    unwritable = None
    if sweep.cache_dir is not None:
        try:
            unwritable = check_cache_dir(sweep.cache_dir)
        except CacheDirError as exc:
            raise ConfigError(f"--cache-dir: {exc}; give a folder for reference solutions, or --no-cache") from None
    base, notes = apply_model_schedule(sweep.base, model.schedule_options, sweep.explicit, model=sweep.model)
    batch = sweep.batch or model.compare_batch
    check_batch_memory(model, batch, device)
    # the report says what ran: the resolved batch and device (not "auto")
    sweep = replace(sweep, base=base, reference_steps=reference_steps, batch=batch, device=str(device))
    planned, skipped = expand(sweep)
    peers = []
    if sweep.peers is not None:
        if sweep.peers != "diffusers":
            raise bad_choice("--peers", sweep.peers, ("diffusers",))
        peers = peers_beside({(p.plan.config, p.plan.nfe) for p in planned if p.plan.config.method != "adaptive"})
    planned += recipe_runs(sweep, model)
    notes = list(model.notes) + notes
    if unwritable:
        notes.append(f"--cache-dir: {unwritable}")
    # what each plan says about its grid (fewer steps than asked, ...), once per distinct message
    notes += list(dict.fromkeys(w for item in planned for w in item.plan.warnings))
    # the model as the runs call it (an exact mixture answers in the sweep's prediction type, which
    # its description states); each run still binds its own plan
    model = model.bind(planned[0].plan)
    return PreparedSweep(sweep, model, planned, skipped, notes, device, dtype, unwritable is None, peers)


def run_sweep(sweep: Sweep | PreparedSweep, on_run: Callable[[str], None] | None = None, *, ranks: Ranks = SINGLE,
              run_log=None) -> SweepReport:
    """Run every valid combination; returns the report (rows sorted by error within each kind).

    ``ranks``: under torchrun, this process's place in the job; every run's samples are split
    across the ranks and gathered, so every rank returns the same report (dpmcli.distributed).
    ``run_log``: a ``runlog.RunLog``; runs it holds are not run again (nor passed to ``on_run``), finished ones go into it.
    """
    start = time.perf_counter()
    prepared = sweep if isinstance(sweep, PreparedSweep) else prepare_sweep(sweep)
    sweep, model = prepared.sweep, prepared.model
    mixture = model.mixture
    shape = (sweep.batch, *model.sample_shape)
    x_T = initial_latents(sweep.seed, shape, prepared.device, model.latent_dtype or prepared.dtype,
                          prepared.planned[0].plan.schedule.init_noise_sigma)
    if mixture is not None:
        references = MixtureReferences(
            mixture, x_T, seed=sweep.seed, bandwidth=default_bandwidth(mixture) if sweep.bandwidth is None else float(sweep.bandwidth),
            reference_steps=sweep.reference_steps, cache_dir=sweep.cache_dir, cache_writable=prepared.cache_writable, ranks=ranks,
        )
    else:
        references = ReferenceRuns(model, x_T, sweep.reference_steps, ranks=ranks, seed=sweep.seed, cache_dir=sweep.cache_dir,
                                   cache_writable=prepared.cache_writable)
    trees: dict = {}

    def noise_for(plan: Plan):
        return BrownianNoise.shared(sweep.seed, plan, shape, trees)

    # Labels name the algorithm, the order and whatever else the sweep varies.
    shown = tuple(f for f in (*SOLVER_FIELDS, *NOISE_DEFAULTS) if f in ("algo", "order") or len(sweep.axis(f)) > 1) + ("corrector",)
    runs: list[dict] = []
    samples: dict = {}
    for scale in sweep.guidance:  # the model is never changed: each run binds it at its scale
        block = _run_block(prepared, scale=scale, shown=shown, x_T=x_T, references=references, noise_for=noise_for, on_run=on_run,
                           ranks=ranks, run_log=run_log)
        runs += [row for row, _ in block]
        samples.update((row["run"], final) for row, final in block if final is not None)
    _mark_best(runs)
    # each guidance block has its own references: its runs stay together, in the order of the scales
    order = {scale: i for i, scale in reversed(list(enumerate(sweep.guidance)))}
    runs.sort(key=lambda r: (order.get(r.get("guidance_scale"), 0), r["kind"], math.inf if r.get("error") is None else r["error"]))
    orders = fit_orders(runs)
    warnings = list(references.cache.warnings)
    return SweepReport(sweep, runs, prepared.skipped, orders, references.describe(), samples, mixture, time.perf_counter() - start,
                       model=model, notes=prepared.notes, warnings=warnings)


def _run_block(prepared: PreparedSweep, *, scale, shown, x_T, references, noise_for, on_run, ranks: Ranks = SINGLE,
               run_log=None) -> list[tuple[dict, object]]:
    """Every planned run at one guidance scale (None: the model's own): [(row, final samples or None)]."""
    sweep, model = prepared.sweep, prepared.model
    out = []
    for item in prepared.planned:
        plan, key = item.plan, item.key
        ran = key["steps"] if plan.config.method == "adaptive" else plan.steps  # a grid may hold fewer steps than asked
        label = run_label({**key, "steps": ran}, shown + ("steps",))
        if len(sweep.guidance) > 1:
            label = f"{label} cfg {scale:g}"
        # finished before an interruption: its row and samples, as recorded (rank 0 reads the log for the job)
        saved = ranks.from_writer(run_log.recorded(label) if run_log is not None else None)
        if saved is not None:
            out.append(saved)
            continue
        solver = run_label(key, shown) + (f" cfg {scale:g}" if len(sweep.guidance) > 1 else "")
        row = {"run": label, "solver": solver, **key, "nfe": plan.nfe, "kind": "sde" if plan.config.is_sde else "ode",
               "convergence_order": plan.convergence_order, "status": "ok"}
        if ran != key["steps"]:
            row["steps"], row["steps_requested"] = ran, key["steps"]
        if scale is not None:
            row["guidance_scale"] = scale
        final = None
        try:
            result = run_split(ranks, lambda x, noise, first: run_plan(plan, model.for_rows(first).bind(plan, scale), x, noise), x_T,
                               noise_for(plan) if plan.config.is_sde else None)
        except NumericalError as exc:
            row.update({"status": "nan", "message": str(exc), "error": None, "seconds": None})
        else:
            final = result.samples.detach().double().cpu()
            row.update(_scores(model, references, item.reference or plan, result=result, final=final, noise_for=noise_for, scale=scale))
            final = final.numpy()
        out.append((row, final))
        if run_log is not None:
            run_log.record(label, row, final)
        if on_run:
            on_run(label)
    for peer, cfg in prepared.peers:
        label = f"{peer.label} {peer.steps} steps" + (f" cfg {scale:g}" if len(sweep.guidance) > 1 else "")
        saved = ranks.from_writer(run_log.recorded(label) if run_log is not None else None)
        row, final = saved if saved is not None else _peer_run(
            prepared, peer, cfg, label, scale=scale, x_T=x_T, references=references, noise_for=noise_for, ranks=ranks)
        out.append((row, final))
        if run_log is not None and saved is None:
            run_log.record(label, row, final)
        if on_run and saved is None:
            on_run(label)
    return out


def _peer_run(prepared: PreparedSweep, peer, cfg: SolverConfig, label: str, *, scale, x_T, references, noise_for, ranks: Ranks):
    """One of diffusers' schedulers on the sweep's x_T, scored as dpmcli's runs are, over the lambda range its grid spans."""
    model, plan = prepared.model, build_plan(cfg)
    reference = reference_plan(cfg, grid_sigmas(build_scheduler(peer, cfg), peer.kind))
    row = {"run": label, "solver": peer.label + (f" cfg {scale:g}" if len(prepared.sweep.guidance) > 1 else ""), "peer": peer.label,
           "algo": peer.kind.short, "order": peer.options.get("solver_order", peer.kind.calls), "steps": peer.steps, "nfe": peer.nfe,
           "kind": "ode", "coefficients": "diffusers", "convergence_order": None, "status": "ok", "note": peer.note or None}
    if scale is not None:
        row["guidance_scale"] = scale

    def run(x, noise, first):
        done = run_peer(peer, cfg, model.for_rows(first).bind(plan, scale), x)
        return RunResult(done.samples, done.nfe, done.seconds)

    result = run_split(ranks, run, x_T)
    final = result.samples.detach().double().cpu()
    if not torch.isfinite(final).all():
        row.update({"status": "nan", "message": "diffusers' run gave NaN or Inf", "error": None, "seconds": None})
        return row, None
    row.update(_scores(model, references, reference, result=result, final=final, noise_for=noise_for, scale=scale))
    return row, final.numpy()


def _scores(model, references, plan: Plan, *, result, final, noise_for, scale) -> dict:
    """A finished run's columns: timing, error against the ground truth, the model's quality numbers."""
    row = {"seconds": result.seconds, "nfe": result.nfe, **references.score(plan, final, noise_for, scale)}
    if model.mixture is None:
        row.update(scalar_quality(model.quality(result.samples)))
    broken = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v) and k != "seconds"]
    if broken:  # finite samples, non-finite scores: never a number that reads as a result
        row.update({k: None for k in broken})
        row.update({"status": "nan", "error": None, "message": f"non-finite {', '.join(broken)} from finite samples"})
    return row


def scalar_quality(quality: dict) -> dict:
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
            "fitted_order": None, **({"peer": rows[0]["peer"]} if rows[0].get("peer") else {}),
        }
        if len(nfes) >= 2:
            x = np.log([n for n, _ in points])
            y = np.log([e for _, e in points])
            entry["fitted_order"] = float(-np.polyfit(x, y, 1)[0])
        out.append(entry)
    return out
