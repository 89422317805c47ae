"""The plan: schedule + grid + solver options frozen into a per-step float64 table.

Everything that depends only on the grid is computed here, once: sigmas, alpha_t, sigma_t,
lambda, h, the order each step uses, and every coefficient of the update. A step at run
time (``solvers.step``) only combines tensors with these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .coefficients import FORMS, AlgoForm, difference_weights, differences_to_linear, exact_weights
from .config import SolverConfig
from .schedule import Schedule, vp_coefficients
from .spacing import make_grid

# Source slots of a step's linear combination (see solvers.step).
SRC_X, SRC_OUT, SRC_NOISE, SRC_HISTORY = 0, 1, 2, 3


@dataclass(frozen=True)
class StepCoefficients:
    """The numbers one step needs, as plain Python floats (cheap to use per step)."""

    index: int
    order: int
    # m0 = p * x + q * out: the model output in the form the algorithm integrates.
    p: float
    q: float
    # x0 = x0_p * x + x0_q * out: the data prediction, for statistics and thresholding.
    x0_p: float
    x0_q: float
    a: float
    b: tuple[float, ...]  # weights on m0, m1, ... (most recent first)
    c: float  # standard deviation of the step's noise term c * z (0 for ODE steps)
    alpha_s: float
    sigma_s: float
    thresholding: bool
    keep: bool  # later steps read this step's m0
    history_after: int  # how many stored outputs later steps still read, after this step
    # How m0 is kept in the history: out * scale (store_ratio None) or (x + store_ratio*out) * scale.
    store_ratio: float | None
    store_scale: float
    # x_next = pivot_coef * (src[pivot] + sum ratio_k * src[k]): fewest tensor ops, ratios <= 1.
    pivot: int
    pivot_coef: float
    terms: tuple[tuple[int, float], ...]


@dataclass(frozen=True, eq=False)
class Plan:
    config: SolverConfig
    schedule: Schedule
    timesteps: np.ndarray  # (N,)
    sigmas: np.ndarray  # (N+1,) diffusers' sigma; last = final sigma
    alpha_t: np.ndarray  # (N+1,)
    sigma_t: np.ndarray  # (N+1,)
    lambdas: np.ndarray  # (N+1,)
    h: np.ndarray  # (N,)
    orders: np.ndarray  # (N,)
    rows: tuple[StepCoefficients, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def nfe(self) -> int:
        return self.steps

    @property
    def history_length(self) -> int:
        return max(1, int(self.orders.max()))

    @cached_property
    def timestep_values(self) -> list:
        """Timesteps as Python numbers: ints where integral (what a network expects), floats otherwise."""
        return [int(t) if float(t).is_integer() else float(t) for t in self.timesteps]

    @property
    def convergence_order(self) -> int:
        """The order the method converges at: published third-order weights converge at order 2."""
        cfg = self.config
        if cfg.order == 3 and cfg.coefficients == "published":
            return 2
        return cfg.order

    @property
    def order_note(self) -> str:
        cfg = self.config
        if cfg.order == 3 and cfg.coefficients == "published":
            return (
                "order 3 with published weights (DPM-Solver++(3M) as in diffusers/k-diffusion): "
                "converges at order 2; --coefficients exact converges at order 3"
            )
        return f"order {cfg.order} with {cfg.coefficients} weights: converges at order {cfg.order}"

    def step_row(self, i: int) -> dict:
        """The columns of ``dpmcli schedule`` for step i."""
        return {
            "step": i,
            "timestep": self.timestep_values[i],
            "sigma": float(self.sigmas[i]),
            "alpha_t": float(self.alpha_t[i]),
            "sigma_t": float(self.sigma_t[i]),
            "lambda": float(self.lambdas[i]),
            "h": float(self.h[i]),
            "order": int(self.orders[i]),
        }

    def step_table(self) -> list[dict]:
        return [self.step_row(i) for i in range(self.steps)]

    def summary(self) -> dict:
        return {
            "nfe": self.nfe,
            "convergence_order": self.convergence_order,
            "order_note": self.order_note,
            "final_sigma_value": float(self.sigmas[-1]),
        }


def step_orders(cfg: SolverConfig, n: int, final_sigma_zero: bool) -> np.ndarray:
    """Warm-up 1, 2, ... then ``order``; the last steps lowered as diffusers lowers them."""
    orders = np.array([min(cfg.order, i + 1) for i in range(n)], dtype=np.int64)
    short = cfg.lower_order_final and n < 15
    if n >= 2 and short:
        orders[n - 2] = min(orders[n - 2], 2)
    if cfg.euler_at_final or short or final_sigma_zero:
        orders[n - 1] = 1
    return orders


def build_plan(cfg: SolverConfig) -> Plan:
    """Validate ``cfg`` and compute the whole per-step table."""
    cfg = cfg.validated()
    schedule = Schedule.from_config(cfg)
    grid = make_grid(schedule, cfg)
    sigmas, timesteps = grid.sigmas, grid.timesteps
    n = len(timesteps)
    alpha, sig, lam = vp_coefficients(sigmas)
    with np.errstate(invalid="ignore"):
        h = lam[1:] - lam[:-1]
    final_zero = sigmas[-1] == 0.0
    orders = step_orders(cfg, n, final_zero)
    # Step j reads the outputs of steps j-1 .. j-order_j+1; keep exactly those alive.
    reach = int(orders.max()) + 1
    oldest_read = [min([j - int(orders[j]) + 1 for j in range(i + 1, min(n, i + reach))], default=i + 1) for i in range(n)]
    history_after = [max(0, i - oldest_read[i] + 1) for i in range(n)]
    keep = [length > 0 for length in history_after]
    if cfg.compat == "diffusers":
        from .compat import diffusers_step_weights

        weight_fn = diffusers_step_weights
    else:
        weight_fn = _own_step_weights
    rows = []
    for i in range(n):
        a, b, c, alpha_s, sigma_s = weight_fn(cfg, sigmas, i, int(orders[i]))
        rows.append(_make_row(cfg, i, int(orders[i]), a, b, c, alpha_s, sigma_s, keep[i], history_after[i], rows))
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
        rows=tuple(rows),
        warnings=tuple(grid.warnings),
    )


def _own_step_weights(cfg: SolverConfig, sigmas: np.ndarray, i: int, order: int):
    """(a, b, c, alpha_s, sigma_s) of step i in float64 from the grid's sigmas."""
    form: AlgoForm = FORMS[cfg.algo]
    alpha, sig, lam = vp_coefficients(sigmas[max(0, i - order + 1) : i + 2])
    alpha_s, sigma_s, lam_s = float(alpha[-2]), float(sig[-2]), float(lam[-2])
    alpha_t, sigma_t, lam_t = float(alpha[-1]), float(sig[-1]), float(lam[-1])
    if sigma_t == 0.0:
        # The step to sigma = 0 (h = inf) is the limit of the first-order step: x_next = x0 prediction.
        if form.data:
            return 0.0, (alpha_t,), 0.0, alpha_s, sigma_s
        return alpha_t / alpha_s, (-alpha_t * sigma_s / alpha_s,), 0.0, alpha_s, sigma_s
    h = lam_t - lam_s
    scale = form.scale(alpha_t, sigma_t)
    ratios = [(lam[-2 - j] - lam[-3 - j]) / h for j in range(order - 1)]
    if cfg.coefficients == "exact":
        b = exact_weights(form, h, scale, ratios)
    else:
        w0, w1, w2 = difference_weights(form, h, scale, order, cfg.coefficients, cfg.solver_type)
        r0 = ratios[0] if order > 1 else 1.0
        r1 = ratios[1] if order > 2 else 1.0
        b = differences_to_linear(order, w0, w1, w2, r0, r1)
    a = form.a(alpha_s, sigma_s, alpha_t, sigma_t, h)
    return a, tuple(float(v) for v in b), form.c(sigma_t, h), alpha_s, sigma_s


def _conversion(data: bool, prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(p, q) with (x0 if data else eps) = p * x + q * model_output."""
    if data:
        if prediction_type == "epsilon":
            return 1.0 / alpha, -sigma / alpha
        if prediction_type == "sample":
            return 0.0, 1.0
        return alpha, -sigma  # v_prediction
    if prediction_type == "epsilon":
        return 0.0, 1.0
    if prediction_type == "sample":
        return 1.0 / sigma, -alpha / sigma
    return sigma, alpha  # v_prediction


def _make_row(cfg, i, order, a, b, c, alpha_s, sigma_s, keep, history_after, previous) -> StepCoefficients:
    form = FORMS[cfg.algo]
    p, q = _conversion(form.data, cfg.prediction_type, alpha_s, sigma_s)
    x0_p, x0_q = _conversion(True, cfg.prediction_type, alpha_s, sigma_s)
    if cfg.thresholding:
        # m0 is computed and thresholded in full, then kept unscaled.
        store_ratio, store_scale = None, 1.0
        coefs = {SRC_X: a, SRC_OUT: b[0]}
    else:
        if p == 0.0:
            store_ratio, store_scale = None, q
        else:
            store_ratio, store_scale = q / p, p
        # Fold m0 = p x + q out into the update: one tensor op fewer per step.
        coefs = {SRC_X: a + b[0] * p, SRC_OUT: b[0] * q}
    for j in range(1, order):
        coefs[SRC_HISTORY + j - 1] = b[j] * previous[i - j].store_scale
    coefs = {k: v for k, v in coefs.items() if v != 0.0}
    if c != 0.0:
        # The noise arrives already scaled by c (drawn as N(0, c^2) in one pass): weight 1,
        # and as the pivot it spares the final multiplication.
        coefs[SRC_NOISE] = 1.0
    if not coefs:  # pragma: no cover - a step always moves x
        coefs = {SRC_X: 0.0}
    pivot = SRC_NOISE if SRC_NOISE in coefs else max(coefs, key=lambda k: abs(coefs[k]))
    pivot_coef = coefs.pop(pivot)
    terms = tuple((k, v / pivot_coef) for k, v in coefs.items()) if pivot_coef != 0.0 else ()
    return StepCoefficients(
        index=i,
        order=order,
        p=p,
        q=q,
        x0_p=x0_p,
        x0_q=x0_q,
        a=float(a),
        b=tuple(float(v) for v in b),
        c=float(c),
        alpha_s=alpha_s,
        sigma_s=sigma_s,
        thresholding=cfg.thresholding,
        keep=keep,
        history_after=history_after,
        store_ratio=store_ratio,
        store_scale=store_scale,
        pivot=pivot,
        pivot_coef=float(pivot_coef),
        terms=terms,
    )
