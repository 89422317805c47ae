"""The plan: schedule + grid + solver options frozen into a float64 table, one row per model call.

Everything that depends only on the grid is computed here, once: sigmas, alpha_t, sigma_t,
lambda, h, the order each step uses, where every model evaluation happens, and every
coefficient of the update. A step at run time (``solvers.step``) only combines tensors with
these numbers.

This module holds the :class:`Plan` record (its table and prose), the order policies and
:func:`build_plan`; how each row is formed and weighed lives in :mod:`dpmcli.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from .compat import diffusers_singlestep_orders
from .config import PUBLISHED_MAX_ORDER, SolverConfig
from .errors import ConfigError
from .corrector import unipc_orders
from .rows import Evaluation, StepCoefficients, as_number, make_rows, noise_draws_per_step
from .specs import (
    ancestral_specs, compat_singlestep_specs, grid_evaluations, multistep_specs, singlestep_specs, startup_specs,
)
from .schedule import Schedule
from .spacing import make_grid

__all__ = [
    "Evaluation", "Plan", "StepCoefficients", "build_plan", "fast_singlestep_orders",
    "multistep_tail", "order_facts", "same_timestep", "snap_integer_timesteps", "step_orders", "tail_plan",
]


@dataclass(frozen=True, eq=False)
class Plan:
    config: SolverConfig
    schedule: Schedule
    timesteps: np.ndarray  # (N,) grid
    sigmas: np.ndarray  # (N+1,) diffusers' sigma; last = final sigma
    alpha_t: np.ndarray  # (N+1,)
    sigma_t: np.ndarray  # (N+1,)
    lambdas: np.ndarray  # (N+1,)
    h: np.ndarray  # (N,)
    orders: np.ndarray  # (N,) the order each grid step reaches
    evaluations: tuple[Evaluation, ...]  # one per row
    rows: tuple[StepCoefficients, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def nfe(self) -> int:
        return len(self.rows)

    @cached_property
    def timestep_values(self) -> list:
        """The timestep of every model call, as Python numbers: ints where integral (what a
        network expects), floats otherwise."""
        return [as_number(e.timestep) for e in self.evaluations]

    @cached_property
    def noise_spans(self) -> dict[int, tuple[float, float]]:
        """{noise draw: its sigma interval} (StepCoefficients.noise_index, .noise_sigmas): what a noise source is asked for."""
        return {row.noise_index: row.noise_sigmas for row in self.rows if row.noise_index >= 0}

    @property
    def noise_draws(self) -> int:
        """How many noise draws a run of this plan indexes: one per grid step, two where a step draws
        twice (DPM-Solver++ SDE); 0 for an ODE plan."""
        return noise_draws_per_step(self.rows) * self.steps if self.noise_spans else 0

    @cached_property
    def evaluations_per_step(self) -> np.ndarray:
        return np.bincount([e.step for e in self.evaluations], minlength=self.steps)

    @property
    def convergence_order(self) -> int:
        """The order the method converges at: published third-order weights converge at order 2."""
        return order_facts(self.config)[0]

    @property
    def order_note(self) -> str:
        return order_facts(self.config)[1]

    def step_row(self, i: int) -> dict:
        """The columns of ``dpmcli schedule`` for grid step i."""
        return {
            "step": i,
            "timestep": as_number(self.timesteps[i]),
            "sigma": float(self.sigmas[i]),
            "alpha_t": float(self.alpha_t[i]),
            "sigma_t": float(self.sigma_t[i]),
            "lambda": float(self.lambdas[i]),
            "h": float(self.h[i]),
            "order": int(self.orders[i]),
            "evaluations": int(self.evaluations_per_step[i]),
        }

    def step_table(self) -> list[dict]:
        return [self.step_row(i) for i in range(self.steps)]

    def eval_row(self, r: int) -> dict:
        """Where model call r happens, with its step's columns."""
        e = self.evaluations[r]
        alpha, sigma, _ = self.schedule.coefficients(e.sigma)
        return {
            "step": e.step,
            "stage": e.stage,
            "timestep": self.timestep_values[r],
            "sigma": float(e.sigma),
            "alpha_t": float(alpha),
            "sigma_t": float(sigma),
            "lambda": float(e.lam),
            "h": float(self.h[e.step]),
            "order": int(self.orders[e.step]),
        }

    def summary(self) -> dict:
        return {
            "nfe": self.nfe,
            "extra_nfe": self.nfe - self.steps,
            "convergence_order": self.convergence_order,
            "order_note": self.order_note,
            "final_sigma_value": float(self.sigmas[-1]),
        }


def order_facts(cfg: SolverConfig) -> tuple[int, str]:
    """(the order the method converges at, the sentence that says so) for a config."""
    if cfg.corrector == "unic":
        predictor = min(cfg.order, 2) if cfg.coefficients == "published" and cfg.order <= PUBLISHED_MAX_ORDER else cfg.order
        weights = "exact" if cfg.coefficients == "exact" else f"published {cfg.unic_variant}"
        note = f"order {cfg.order} predictor with the UniC corrector ({weights} weights)"
        if predictor >= 3:  # the corrected first-order first step has local error O(h^3)
            return 3, note + ": converges at order 3 at least (the first step caps it there asymptotically; higher at practical step counts)"
        return predictor + 1, note + f": converges at order {predictor + 1}, one above the predictor's {predictor}, at no extra model call"
    if cfg.ancestral:
        name = "DPM-Solver++ SDE" if cfg.method == "singlestep" else f"DPM-Solver++({'1' if cfg.order == 1 else '2S'}) ancestral"
        return cfg.order, f"{name}, eta {cfg.sde_eta:g}: its ODE part has order {cfg.order}; it follows the SDE at eta {cfg.sde_eta**2:g} (eta squared)"
    if cfg.method == "singlestep":
        return cfg.order, f"singlestep DPM-Solver-{cfg.order} with {cfg.coefficients} weights: converges at order {cfg.order}"
    if cfg.method == "adaptive":
        return cfg.order, f"adaptive DPM-Solver-{cfg.order - 1}{cfg.order}: step sizes chosen at run time"
    if cfg.order == 3 and cfg.coefficients == "published":
        return 2, (
            "order 3 with published weights (DPM-Solver++(3M) as in diffusers/k-diffusion): "
            "converges at order 2; --coefficients exact converges at order 3"
        )
    weights = "exact" if cfg.order > PUBLISHED_MAX_ORDER else cfg.coefficients
    note = f"order {cfg.order} with {weights} weights"
    if cfg.order >= 4 and cfg.startup == "lower-order":
        # the first-order first step caps it (measured 2.4-2.7 and falling)
        return 2, note + ": the first-order first step caps the order at 2; --startup singlestep keeps order " + str(cfg.order)
    if cfg.order == 3 and cfg.startup == "lower-order":
        return 3, note + ": converges at order 3 at practical step counts (the first-order first step caps it at 2 asymptotically)"
    return cfg.order, note + f": converges at order {cfg.order}"


def step_orders(cfg: SolverConfig, n: int, final_sigma_zero: bool) -> np.ndarray:
    """Warm-up 1, 2, ... then ``order``; the last steps lowered as diffusers lowers them."""
    orders = np.array([min(cfg.order, i + 1) for i in range(n)], dtype=np.int64)
    short = cfg.lower_order_final and n < 15
    if n >= 2 and short:
        orders[n - 2] = min(orders[n - 2], 2)
    if cfg.euler_at_final or short or final_sigma_zero:
        orders[n - 1] = 1
    return orders


def fast_singlestep_orders(nfe: int, order: int) -> list[int]:
    """DPM-Solver-fast: the per-step orders that spend exactly ``nfe`` model calls."""
    if order == 3:
        steps = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (steps - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (steps - 1) + [1]
        return [3] * (steps - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + ([1] if nfe % 2 else [])
    return [1] * nfe


def build_plan(cfg: SolverConfig) -> Plan:
    """Validate ``cfg`` and compute the whole table."""
    cfg = cfg.validated()
    if cfg.method == "singlestep" and cfg.nfe is not None:
        if cfg.final_sigma == "zero" and cfg.nfe > 1:
            # the step to sigma 0 is first order: plan the rest with the calls it leaves
            fast = fast_singlestep_orders(cfg.nfe - 1, cfg.order) + [1]
        else:
            fast = fast_singlestep_orders(cfg.nfe, cfg.order)
        cfg = cfg.with_options(steps=len(fast)).validated()
    else:
        fast = None
    schedule = Schedule.from_config(cfg)
    if cfg.method == "adaptive":
        # the controller picks the steps at run time; the plan holds the range it covers
        spacing = "time-uniform" if schedule.process == "vp" else "logsnr"
        grid = make_grid(schedule, cfg.with_options(steps=1, spacing=spacing, sigmas=None))
    else:
        grid = make_grid(schedule, cfg)
    sigmas, timesteps = grid.sigmas, grid.timesteps
    alpha, sig, lam = schedule.coefficients(sigmas)
    with np.errstate(invalid="ignore"):
        h = lam[1:] - lam[:-1]
    orders, evaluations, specs = _method_specs(cfg, schedule, timesteps, sigmas, lam, fast)
    rows = make_rows(cfg, schedule, evaluations, specs, sigmas)
    failing = [row for row in rows if row.failure is not None]
    notes = list(grid.warnings)
    if failing:
        more = f" ({len(failing) - 1} later row(s) too)" if len(failing) > 1 else ""
        notes.append(f"{failing[0].failure}{more}; a run stops there with a numerical error")
    return Plan(
        config=cfg,
        schedule=schedule,
        timesteps=timesteps,
        sigmas=sigmas,
        alpha_t=alpha,
        sigma_t=sig,
        lambdas=lam,
        h=h,
        orders=orders,
        evaluations=evaluations,
        rows=rows,
        warnings=tuple(notes),
    )


def _method_specs(cfg: SolverConfig, schedule: Schedule, timesteps, sigmas, lam, fast):
    """(orders per grid step, evaluations, row specs) of the method ``cfg`` names."""
    n = len(timesteps)
    final_zero = sigmas[-1] == 0.0
    if cfg.method == "adaptive":
        return np.array([cfg.order], dtype=np.int64), (), []
    if cfg.method == "singlestep" and cfg.compat == "diffusers":
        orders = np.array(diffusers_singlestep_orders(cfg, n), dtype=np.int64)
        return orders, grid_evaluations(timesteps, sigmas, lam), compat_singlestep_specs(orders, lam)
    if cfg.method in ("singlestep", "ancestral"):
        orders = np.array(fast if fast is not None else [cfg.order] * n, dtype=np.int64)[:n]
        if final_zero:
            orders[-1] = 1
        if cfg.ancestral:
            return ancestral_specs(cfg, schedule, timesteps, sigmas, lam, orders)
        return (orders, *singlestep_specs(cfg, schedule, timesteps, sigmas, lam, orders))
    orders = np.array(unipc_orders(cfg, n)) if cfg.compat == "diffusers" and cfg.corrector == "unic" else step_orders(cfg, n, final_zero)
    if cfg.startup == "singlestep" and cfg.order >= 3:
        evaluations, specs, orders = startup_specs(cfg, timesteps, sigmas, lam, orders)
        return orders, evaluations, specs
    return orders, grid_evaluations(timesteps, sigmas, lam), multistep_specs(cfg, orders, lam)


def multistep_tail(plan: Plan, start: int) -> Plan:
    """The multistep plan of grid steps ``start`` onwards, warming up again from first order.

    This is what diffusers' multistep scheduler does when a run begins mid-grid: no earlier model
    outputs exist, so the orders climb 1, 2, ... again, while the lowered final steps stay as the
    whole grid set them. Rows are built by the plan's own functions from the sliced grid.
    """
    cfg = plan.config
    sigmas, lambdas, timesteps = plan.sigmas[start:], plan.lambdas[start:], plan.timesteps[start:]
    count = len(timesteps)
    orders = np.minimum(plan.orders[start:], np.arange(1, count + 1))
    evaluations = grid_evaluations(timesteps, sigmas, lambdas)
    specs = multistep_specs(cfg, orders, lambdas)
    return Plan(
        config=cfg,
        schedule=plan.schedule,
        timesteps=timesteps,
        sigmas=sigmas,
        alpha_t=plan.alpha_t[start:],
        sigma_t=plan.sigma_t[start:],
        lambdas=lambdas,
        h=plan.h[start:],
        orders=orders,
        evaluations=evaluations,
        rows=make_rows(cfg, plan.schedule, evaluations, specs, sigmas),
        warnings=plan.warnings,
    )


def same_timestep(given: float, tolerance: float, expected: float) -> bool:
    """Whether a timestep is the one expected, to a relative ``tolerance`` (absolute below 1)."""
    return abs(given - expected) <= tolerance * max(1.0, abs(expected))


def tail_plan(plan: Plan, begin: int, where: str) -> Plan:
    """The plan of a run that starts at model call ``begin`` (img2img): the rest of the grid, warming up again.

    Multistep: :func:`multistep_tail`. Other methods start at a grid point on the rest of the grid,
    as long as that calls the model at the same timesteps; ``where`` names the caller in errors.
    """
    start = plan.evaluations[begin].step
    rest = plan.evaluations[begin:]
    plain = all(e.stage == 0 for e in rest) and [e.step for e in rest] == list(range(start, plan.steps))
    if plain and plan.config.method == "multistep":
        return multistep_tail(plan, start)
    cfg = plan.config
    if cfg.compat == "diffusers" or plan.evaluations[begin].stage != 0:
        raise ConfigError(f"{where}: cannot start at timesteps[{begin}] (a model call inside a {cfg.method} step); "
                          "start at the beginning or use method 'multistep'")
    tail = build_plan(cfg.with_options(sigmas=tuple(float(s) for s in plan.sigmas[start:]), timesteps=None, nfe=None))
    expected = plan.timestep_values[begin:]
    if len(tail.timestep_values) != len(expected) or not all(
        same_timestep(a, 1e-9, b) for a, b in zip(tail.timestep_values, expected)
    ):
        raise ConfigError(f"{where}: cannot start at timesteps[{begin}]: a run from there calls the model at other timesteps; "
                          "start at the beginning or use startup 'lower-order'")
    return tail


def snap_integer_timesteps(plan: Plan) -> Plan:
    """A custom grid's timesteps come back from sigma through lambda: undo the round-off on integer ones."""
    nearest = np.round(plan.timesteps)
    snap = np.abs(plan.timesteps - nearest) <= 1e-9 * np.maximum(1.0, np.abs(nearest))
    if not snap.any():
        return plan
    timesteps = np.where(snap, nearest, plan.timesteps)
    evaluations = tuple(
        replace(e, timestep=float(timesteps[e.step])) if e.stage == 0 and snap[e.step] else e for e in plan.evaluations
    )
    return replace(plan, timesteps=timesteps, evaluations=evaluations)
