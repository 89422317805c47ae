"""The plan: schedule + grid + solver options frozen into a float64 table, one row per model call.

Everything that depends only on the grid is computed here, once: sigmas, alpha_t, sigma_t,
lambda, h, the order each step uses, where every model evaluation happens, and every
coefficient of the update. A step at run time (``solvers.step``) only combines tensors with
these numbers.

A row is one model evaluation. Multistep runs have one per grid step; singlestep steps and the
singlestep start-up add evaluations (``stage`` > 0). Each row says how its output latent is
formed: the exponential-integrator update from an *anchor* latent (its own input, or the
latent at the start of its step) with a polynomial through earlier model outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from .coefficients import FORMS, AlgoForm, difference_weights, differences_to_linear, lagrange_weights
from .config import PUBLISHED_MAX_ORDER, SolverConfig
from .schedule import Schedule, alpha_sigma, vp_coefficients
from .spacing import make_grid

# Source slots of a row's linear combination (see solvers.step).
SRC_X, SRC_OUT, SRC_NOISE, SRC_ANCHOR, SRC_HISTORY = 0, 1, 2, 3, 4

# Intermediate points of the singlestep DPM-Solvers, as fractions of the step in lambda.
SINGLESTEP_NODES = {1: (0.0,), 2: (0.0, 0.5), 3: (0.0, 1.0 / 3.0, 2.0 / 3.0)}


@dataclass(frozen=True)
class Evaluation:
    """Where one model call happens."""

    step: int  # the grid step it belongs to
    stage: int  # 0 at the grid point; > 0 an extra evaluation (singlestep node or start-up sweep)
    lam: float
    timestep: float
    sigma: float


@dataclass(frozen=True)
class StepCoefficients:
    """The numbers one row needs, as plain Python floats (cheap to use per call)."""

    index: int  # the row (evaluation) index
    step: int
    stage: int
    order: int
    # m0 = p * x + q * out: the model output in the form the algorithm integrates.
    p: float
    q: float
    # x0 = x0_p * x + x0_q * out: the data prediction, for statistics and thresholding.
    x0_p: float
    x0_q: float
    anchor: int  # the row whose input latent the update starts from (this row for multistep)
    target: float  # lambda of the latent this row produces
    a: float  # weight on the anchor latent
    b: tuple[float, ...]  # weights on the model outputs read (the current one first)
    reads: tuple[int, ...]  # the rows whose outputs b weighs
    c: float  # standard deviation of the noise term c * z (0 for ODE rows)
    alpha_s: float
    sigma_s: float
    thresholding: bool
    sets_anchor: bool  # later rows start their update from this row's input latent
    keep: bool  # later rows read this row's m0
    history_after: int  # how many stored outputs later rows still read, after this row
    # How m0 is kept in the history: out * scale (store_ratio None) or (x + store_ratio*out) * scale.
    store_ratio: float | None
    store_scale: float
    # x_next = pivot_coef * (src[pivot] + sum ratio_k * src[k]): fewest tensor ops.
    pivot: int
    pivot_coef: float
    terms: tuple[tuple[int, float], ...]
    # Why this row cannot be stepped (its weights are not finite), as one line; None when it can.
    # diffusers' arithmetic on a grid with a zero-length step divides by h = 0 (compat mode keeps
    # that grid): the row is planned, and stepping it raises NumericalError with this message.
    failure: str | None = None


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
        return [_number(e.timestep) for e in self.evaluations]

    @cached_property
    def evaluations_per_step(self) -> np.ndarray:
        return np.bincount([e.step for e in self.evaluations], minlength=self.steps)

    @property
    def convergence_order(self) -> int:
        """The order the method converges at: published third-order weights converge at order 2."""
        cfg = self.config
        if cfg.method == "multistep" and cfg.order == 3 and cfg.coefficients == "published":
            return 2
        if cfg.method == "multistep" and cfg.order >= 4 and cfg.startup == "lower-order":
            return 2  # the first-order first step caps it (measured 2.4-2.7 and falling)
        return cfg.order

    @property
    def order_note(self) -> str:
        cfg = self.config
        if cfg.method == "singlestep":
            return f"singlestep DPM-Solver-{cfg.order} with {cfg.coefficients} weights: converges at order {cfg.order}"
        if cfg.method == "adaptive":
            return f"adaptive DPM-Solver-{cfg.order - 1}{cfg.order}: step sizes chosen at run time"
        if cfg.order == 3 and cfg.coefficients == "published":
            return (
                "order 3 with published weights (DPM-Solver++(3M) as in diffusers/k-diffusion): "
                "converges at order 2; --coefficients exact converges at order 3"
            )
        weights = "exact" if cfg.order > PUBLISHED_MAX_ORDER else cfg.coefficients
        note = f"order {cfg.order} with {weights} weights"
        if cfg.order >= 4 and cfg.startup == "lower-order":
            return note + ": the first-order first step caps the order at 2; --startup singlestep keeps order " + str(cfg.order)
        if cfg.order == 3 and cfg.startup == "lower-order":
            return note + ": converges at order 3 at practical step counts (the first-order first step caps it at 2 asymptotically)"
        return note + f": converges at order {cfg.order}"

    def step_row(self, i: int) -> dict:
        """The columns of ``dpmcli schedule`` for grid step i."""
        return {
            "step": i,
            "timestep": _number(self.timesteps[i]),
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
        alpha, sigma, _ = vp_coefficients(e.sigma)
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


def _number(t):
    return int(t) if float(t).is_integer() else float(t)


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


@dataclass
class _Spec:
    """How one row's output latent is formed."""

    order: int
    anchor: int | None  # the row whose input latent the update starts from; None: this row
    target: float  # lambda of the output latent (inf: sigma 0)
    reads: tuple[int, ...]  # rows whose model outputs are interpolated, this row first
    rule: str  # "exact", "published" (multistep difference form), "midpoint" (singlestep 2), "compat"


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
        grid = make_grid(schedule, cfg.with_options(steps=1, spacing="time-uniform", sigmas=None))
    else:
        grid = make_grid(schedule, cfg)
    sigmas, timesteps = grid.sigmas, grid.timesteps
    n = len(timesteps)
    alpha, sig, lam = vp_coefficients(sigmas)
    with np.errstate(invalid="ignore"):
        h = lam[1:] - lam[:-1]
    final_zero = sigmas[-1] == 0.0
    if cfg.method == "adaptive":
        orders = np.array([cfg.order], dtype=np.int64)
        evaluations, specs = (), []
    elif cfg.method == "singlestep" and cfg.compat == "diffusers":
        from .compat import diffusers_singlestep_orders

        orders = np.array(diffusers_singlestep_orders(cfg, n), dtype=np.int64)
        evaluations = tuple(Evaluation(k, 0, float(lam[k]), float(timesteps[k]), float(sigmas[k])) for k in range(n))
        specs = [
            _Spec(int(o), None if o == 1 else k - int(o) + 1, float(lam[k + 1]), tuple(range(k, k - int(o), -1)), "compat-singlestep")
            for k, o in enumerate(orders)
        ]
    elif cfg.method == "singlestep":
        orders = np.array(fast if fast is not None else [cfg.order] * n, dtype=np.int64)[:n]
        if final_zero:
            orders[-1] = 1
        evaluations, specs = _singlestep_specs(cfg, schedule, timesteps, sigmas, lam, orders)
    else:
        orders = step_orders(cfg, n, final_zero)
        if cfg.startup == "singlestep" and cfg.order >= 3:
            evaluations, specs, orders = _startup_specs(cfg, timesteps, sigmas, lam, orders)
        else:
            evaluations = tuple(Evaluation(k, 0, float(lam[k]), float(timesteps[k]), float(sigmas[k])) for k in range(n))
            specs = [_multistep_spec(cfg, k, int(orders[k]), list(range(k, k - int(orders[k]), -1)), lam) for k in range(n)]
    rows = _make_rows(cfg, evaluations, specs, sigmas)
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


def _multistep_spec(cfg: SolverConfig, k: int, order: int, reads: list[int], lam: np.ndarray) -> _Spec:
    if cfg.compat == "diffusers":
        rule = "compat"
    elif cfg.coefficients == "published" and order <= PUBLISHED_MAX_ORDER:
        rule = "published"
    else:
        rule = "exact"
    return _Spec(order, None, float(lam[k + 1]), tuple(reads), rule)


def _startup_specs(cfg: SolverConfig, timesteps, sigmas, lam, orders):
    """Multistep of order K started by a singlestep block over the first K grid points.

    The first pass is the classic warm-up (orders 1 .. K-1, errors O(h^2)); then K-2 sweeps
    recompute x at grid points 1 .. K-1 from x_0 with the polynomial through all K outputs
    (exact weights) and evaluate the model again: each sweep gains one order, so the start-up
    values carry errors O(h^K) and the method keeps its nominal order K.
    """
    k_order = cfg.order
    n = len(timesteps)
    sweeps = k_order - 2
    evaluations: list[Evaluation] = []
    specs: list[_Spec] = []
    latest: dict[int, int] = {}  # grid point -> its latest evaluation (row)

    def add(step: int, stage: int, spec: _Spec) -> None:
        latest[step] = len(evaluations)
        evaluations.append(Evaluation(step, stage, float(lam[step]), float(timesteps[step]), float(sigmas[step])))
        specs.append(spec)

    def all_nodes(current: int) -> tuple[int, ...]:
        return (current,) + tuple(latest[g] for g in range(k_order - 1, -1, -1) if latest.get(g) != current)

    for k in range(k_order - 1):  # the warm-up pass
        order = k + 1
        row = len(evaluations)
        add(k, 0, _multistep_spec(cfg, k, order, [row] + [latest[g] for g in range(k - 1, k - order, -1)], lam))
    for sweep in range(sweeps + 1):  # sweep 0 evaluates grid point K-1 for the first time
        for j in (range(k_order - 1, k_order) if sweep == 0 else range(1, k_order)):
            row = len(evaluations)
            latest[j] = row
            if j < k_order - 1:
                spec = _Spec(k_order, 0, float(lam[j + 1]), all_nodes(row), "exact")
            elif sweep < sweeps:
                spec = _Spec(k_order, 0, float(lam[1]), all_nodes(row), "exact")
            else:  # the block is done: the first regular order-K step
                spec = _multistep_spec(cfg, j, int(orders[j]), [row] + [latest[g] for g in range(j - 1, j - int(orders[j]), -1)], lam)
            del latest[j]
            add(j, sweep, spec)
    for k in range(k_order, n):
        order = int(orders[k])
        row = len(evaluations)
        add(k, 0, _multistep_spec(cfg, k, order, [row] + [latest[g] for g in range(k - 1, k - order, -1)], lam))
    orders = orders.copy()
    orders[: k_order - 1] = k_order  # the start-up block reaches order K
    return tuple(evaluations), specs, orders


def _singlestep_specs(cfg: SolverConfig, schedule: Schedule, timesteps, sigmas, lam, orders):
    """DPM-Solver-1/2/3: intermediate evaluations at the papers' fractions of each step."""
    evaluations: list[Evaluation] = []
    specs: list[_Spec] = []
    for k, order in enumerate(int(o) for o in orders):
        nodes = SINGLESTEP_NODES[order]
        h = float(lam[k + 1] - lam[k])
        first = len(evaluations)
        for j, c in enumerate(nodes):
            if j == 0:
                evaluations.append(Evaluation(k, 0, float(lam[k]), float(timesteps[k]), float(sigmas[k])))
            else:
                lam_j = float(lam[k]) + c * h
                evaluations.append(Evaluation(k, j, lam_j, float(schedule.timestep_at(lam_j)), math.exp(-lam_j)))
            row = first + j
            last = j == len(nodes) - 1
            target = float(lam[k + 1]) if last else float(lam[k]) + nodes[j + 1] * h
            anchor = None if j == 0 else first
            if not last:
                # the way to the next node: exact through the nodes so far (first order from the grid point)
                reads = tuple(range(row, first - 1, -1))
                rule = "exact"
            elif order == 1:
                reads, rule = (row,), "exact"
            elif order == 2:
                reads, rule = (row, first), ("exact" if cfg.coefficients == "exact" else "midpoint")
            elif cfg.coefficients == "exact":
                reads, rule = (row, first + 1, first), "exact"
            else:  # published DPM-Solver-3: linear through the grid point and the 2/3 node
                reads, rule = (row, first), "exact"
            specs.append(_Spec(order, anchor, target, reads, rule))
    return tuple(evaluations), specs


def _row_weights(cfg: SolverConfig, evaluations, spec: _Spec, row: int, sigmas: np.ndarray):
    """(a, b, c): anchor weight, weights on spec.reads, noise standard deviation."""
    form: AlgoForm = FORMS[cfg.algo]
    here = evaluations[row]
    start = evaluations[row if spec.anchor is None else spec.anchor]
    if spec.rule == "compat":
        from .compat import diffusers_step_weights

        a, b, c, _, _ = diffusers_step_weights(cfg, sigmas, here.step, spec.order)
        return a, b, c
    if spec.rule == "compat-singlestep":
        from .compat import diffusers_singlestep_weights

        return diffusers_singlestep_weights(cfg, sigmas, here.step, spec.order)
    alpha_s, sigma_s, lam_s = _vp(start.lam)
    alpha_t, sigma_t, lam_t = _vp(spec.target)
    if sigma_t == 0.0:
        # The step to sigma = 0 (h = inf) is the limit of the first-order step: the data prediction.
        if form.data:
            return 0.0, (alpha_t,), 0.0
        return alpha_t / alpha_s, (-alpha_t * sigma_s / alpha_s,), 0.0
    h = lam_t - lam_s
    scale = form.scale(alpha_t, sigma_t)
    nodes = [(evaluations[r].lam - lam_s) / h for r in spec.reads]
    if spec.rule == "exact":
        b = lagrange_weights(form, h, scale, nodes)
    elif spec.rule == "midpoint":  # singlestep DPM-Solver-2 as published: W0/2 on (m1 - m0)/r1
        w0 = difference_weights(form, h, scale, 1, "published", "midpoint")[0]
        r1 = nodes[0]
        b = [0.5 * w0 / r1, w0 - 0.5 * w0 / r1]
    else:  # published multistep: DPM-Solver's differences over consecutive grid points
        order = len(spec.reads)
        w0, w1, w2 = difference_weights(form, h, scale, order, cfg.coefficients, cfg.solver_type)
        r0 = -nodes[1] if order > 1 else 1.0
        r1 = nodes[1] - nodes[2] if order > 2 else 1.0
        b = differences_to_linear(order, w0, w1, w2, r0, r1)
    return form.a(alpha_s, sigma_s, alpha_t, sigma_t, h), tuple(float(v) for v in b), form.c(sigma_t, h)


def _vp(lam: float) -> tuple[float, float, float]:
    alpha, sigma = alpha_sigma(lam)
    return alpha, sigma, lam


def _make_rows(cfg: SolverConfig, evaluations, specs: list[_Spec], sigmas: np.ndarray) -> tuple:
    count = len(specs)
    readers: dict[int, list[int]] = {}
    anchors = set()
    for r, spec in enumerate(specs):
        for e in spec.reads:
            if e != r:
                readers.setdefault(e, []).append(r)
        if spec.anchor is not None and spec.anchor != r:
            anchors.add(spec.anchor)
    keep = [bool(readers.get(r)) for r in range(count)]
    stored_before = np.concatenate([[0], np.cumsum(keep)])  # stored rows among 0 .. r-1
    # After row r the history must still hold every stored output a later row reads: from the
    # oldest one still to be read, everything stored since.
    oldest = [r + 1 for r in range(count)]
    for e in sorted(readers):
        for r in range(e, max(readers[e])):
            oldest[r] = min(oldest[r], e)
    history_after = [int(stored_before[r + 1] - stored_before[min(oldest[r], r + 1)]) for r in range(count)]
    rows: list[StepCoefficients] = []
    for r, spec in enumerate(specs):
        a, b, c = _row_weights(cfg, evaluations, spec, r, sigmas)
        # the conversion of this row's model output uses the noise level of its own evaluation
        if spec.rule.startswith("compat"):
            from .compat import _vp32  # diffusers converts with its float32 alpha and sigma

            alpha_s, sigma_s = (float(v) for v in _vp32(sigmas[evaluations[r].step])[:2])
        else:
            alpha_s, sigma_s, _ = _vp(evaluations[r].lam)
        positions = {e: int(stored_before[r] - stored_before[e + 1]) for e in spec.reads if e != r}
        row = _make_row(cfg, r, evaluations[r], spec, a, b, c, alpha_s, sigma_s, keep[r], history_after[r], r in anchors, positions, rows)
        if not all(math.isfinite(v) for v in (a, c, *b)):
            row = replace(row, failure=_failure(evaluations, spec, r, sigmas))
        rows.append(row)
    return tuple(rows)


def _failure(evaluations, spec: _Spec, r: int, sigmas: np.ndarray) -> str:
    """Why row r's weights are not finite: the zero-length grid step its update divides by, if any."""
    here = evaluations[r]
    where = f"step {here.step} (timestep {_number(here.timestep)}"
    steps = sorted({evaluations[e].step for e in spec.reads} | {here.step}, reverse=True)
    zero = [j for j in steps if j + 1 < len(sigmas) and sigmas[j + 1] == sigmas[j]]
    if not zero:
        return f"{where}): the update's weights are not finite (NaN or Inf)"
    j = zero[0]
    step_times = {e.step: e.timestep for e in evaluations if e.stage == 0}
    t_j, t_next = step_times.get(j), step_times.get(j + 1)
    if t_next is not None and t_next == t_j:
        why = f"timestep {_number(t_j)} repeats, so step {j} has zero length"
    elif t_next is None:
        why = f"the last step ({j}) has zero length (its final sigma {sigmas[j]:.6g} repeats)"
    else:
        why = f"step {j} has zero length (sigma {sigmas[j]:.6g} at timesteps {_number(t_j)} and {_number(t_next)})"
    divides = "its update divides by h = 0" if j == here.step else f"its order-{spec.order} update divides by that step's h = 0"
    return (
        f"{where}): the weights are not finite: {why} and {divides}, where diffusers returns NaN; "
        "use another step count or spacing, or leave compat mode"
    )


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


def _make_row(cfg, r, evaluation, spec, a, b, c, alpha_s, sigma_s, keep, history_after, sets_anchor, positions, previous) -> StepCoefficients:
    form = FORMS[cfg.algo]
    p, q = _conversion(form.data, cfg.prediction_type, alpha_s, sigma_s)
    x0_p, x0_q = _conversion(True, cfg.prediction_type, alpha_s, sigma_s)
    own = b[0]  # spec.reads starts with this row
    anchor_slot = SRC_X if spec.anchor is None or spec.anchor == r else SRC_ANCHOR
    coefs: dict[int, float] = {SRC_X: 0.0, anchor_slot: 0.0}
    coefs[anchor_slot] += a
    if cfg.thresholding:
        # m0 is computed and thresholded in full, then kept unscaled.
        store_ratio, store_scale = None, 1.0
        coefs[SRC_OUT] = own
    else:
        if p == 0.0:
            store_ratio, store_scale = None, q
        else:
            store_ratio, store_scale = q / p, p
        # Fold m0 = p x + q out into the update: one tensor op fewer per row.
        coefs[SRC_X] += own * p
        coefs[SRC_OUT] = own * q
    for e, weight in zip(spec.reads[1:], b[1:]):
        coefs[SRC_HISTORY + positions[e]] = weight * previous[e].store_scale
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
        index=r,
        step=evaluation.step,
        stage=evaluation.stage,
        order=spec.order,
        p=p,
        q=q,
        x0_p=x0_p,
        x0_q=x0_q,
        anchor=r if spec.anchor is None else spec.anchor,
        target=spec.target,
        a=float(a),
        b=tuple(float(v) for v in b),
        reads=spec.reads,
        c=float(c),
        alpha_s=alpha_s,
        sigma_s=sigma_s,
        thresholding=cfg.thresholding,
        sets_anchor=sets_anchor,
        keep=keep,
        history_after=history_after,
        store_ratio=store_ratio,
        store_scale=store_scale,
        pivot=pivot,
        pivot_coef=float(pivot_coef),
        terms=terms,
    )


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
    evaluations = tuple(Evaluation(j, 0, float(lambdas[j]), float(timesteps[j]), float(sigmas[j])) for j in range(count))
    specs = [_multistep_spec(cfg, j, int(orders[j]), list(range(j, j - int(orders[j]), -1)), lambdas) for j in range(count)]
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
        rows=_make_rows(cfg, evaluations, specs, sigmas),
        warnings=plan.warnings,
    )
