"""Plan rows: how each model call's output latent is formed, and the numbers its update needs.

A row is one model evaluation. Multistep runs have one per grid step; singlestep steps and the
singlestep start-up add evaluations (``stage`` > 0). A :class:`RowSpec` says how a row's output
latent is formed — the exponential-integrator update from an *anchor* latent (its own input, or
the latent at the start of its step) with a polynomial through earlier model outputs, weighed
by one :class:`Rule` (each method's specs: :mod:`dpmcli.specs`) — and :func:`make_rows` turns them into :class:`StepCoefficients`:
the weights, what the history keeps, and the conversion of the raw model output folded into
one linear combination (``solvers.step``).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from .coefficients import (
    AlgoForm, algo_form, ancestral_split, difference_weights, differences_to_linear, kernel_moments, lagrange_weights,
    midpoint_weights, unipc_weights,
)
from .compat import alpha_sigma32, diffusers_singlestep_weights, diffusers_step_weights
from .config import SolverConfig
from .final_step import kept_latent
from .schedule import Schedule, alpha_sigma

# Source slots of a row's linear combination (see solvers.step).
SRC_X, SRC_OUT, SRC_NOISE, SRC_ANCHOR, SRC_HISTORY = 0, 1, 2, 3, 4


def as_number(t):
    """A timestep as a network expects it: an int where integral, a float otherwise."""
    return int(t) if float(t).is_integer() else float(t)


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
    input_scale: float  # the network sees input_scale * x (EDM's c_in; 1 elsewhere)
    thresholding: bool
    threshold_ratio: float  # dynamic thresholding: the quantile of |x0| ...
    threshold_max: float  # ... and the largest threshold (the config's sample_max_value)
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
    # Which noise draw this row takes (-1: none): the grid step for one draw per step, and
    # 2 * step + j where a step draws twice (DPM-Solver++ SDE); what a noise source is asked for.
    noise_index: int = -1
    # The noise's interval in the grid's sigma column (diffusers' sigma), from -> to: what a
    # Brownian source takes the increment over.
    noise_sigmas: tuple[float, float] | None = None
    # UniC (--corrector unic): ((source slot, weight), ...) forming the corrected latent before the update,
    # from the anchor (the previous grid point's corrected latent), this output and the history; () for none.
    correction: tuple[tuple[int, float], ...] = ()


class Rule(enum.Enum):
    """Which weights a row's update uses."""

    EXACT = "exact"  # Lagrange weights through the nodes read: exact for degree len(reads) - 1
    PUBLISHED = "published"  # multistep difference form as DPM-Solver publishes it
    MIDPOINT = "midpoint"  # singlestep DPM-Solver-2 as published
    COMPAT = "compat"  # diffusers' multistep float32 arithmetic
    COMPAT_SINGLESTEP = "compat-singlestep"  # diffusers' singlestep float32 arithmetic
    INNER = "inner"  # all weight on the inner node: k-diffusion's r = 1/2 steps (2S ancestral, DPM-Solver++ SDE)
    UNIPC = "unipc"  # UniPC's B(h) weights (--unic-variant): UniC's corrector, and UniP's predictor in diffusers' compat

    @property
    def compat(self) -> bool:
        return self in (Rule.COMPAT, Rule.COMPAT_SINGLESTEP)


@dataclass(frozen=True)
class Correction:
    """UniC: once a row's model output is known, its input latent is formed again from ``start``'s
    (corrected) latent with a polynomial through ``reads`` (this row first), one order higher."""

    start: int  # the row of the previous grid point: its corrected latent is the anchor
    reads: tuple[int, ...]
    rule: Rule


@dataclass(frozen=True)
class RowSpec:
    """How one row's output latent is formed."""

    order: int
    anchor: int | None  # the row whose input latent the update starts from; None: this row
    target: float  # lambda of the output latent (inf: sigma 0)
    reads: tuple[int, ...]  # rows whose model outputs are interpolated, this row first
    rule: Rule
    # An ancestral step: the ODE update goes to the lambda below ``target`` that ancestral_split
    # gives, noise brings it up to ``target``; ``noise_sigmas`` the interval its noise is drawn over.
    ancestral: bool = False
    noise_sigmas: tuple[float, float] | None = None
    # --corrector unic: this row's input latent is corrected first, and the update starts from the corrected one
    corrector: Correction | None = None


# ---------------------------------------------------------------- the weights


def update_weights(form: AlgoForm, rule: Rule, lam_s: float, lam_t: float, node_lams, solver_type: str = "midpoint", *,
                   noise_level=alpha_sigma, variant: str = "bh2", final_decay: float = 0.0):
    """(a, b, c) of the exponential-integrator update from lambda ``lam_s`` to ``lam_t``.

    a weighs the latent at ``lam_s``, b the model outputs evaluated at ``node_lams`` (in that
    order), c is the noise standard deviation. The rules of dpmcli's own arithmetic (not compat).
    ``noise_level(lam) -> (alpha_t, sigma_t)`` is the process's (VP by default): the weights in
    lambda are the same on every process, only these scales differ. ``variant``: UniPC's B(h) (Rule.UNIPC);
    ``final_decay``: --final-decay's P, for a step onto sigma 0.
    """
    alpha_s, sigma_s = noise_level(lam_s)
    alpha_t, sigma_t = noise_level(lam_t)
    if sigma_t == 0.0:
        # The step to sigma = 0 (h = inf) is the limit of the first-order step: the data prediction;
        # with --final-decay P, x~_0 = w x~_s + (1 - w) D_s, w = P / (P + 1) (docs/mathematics.md §14).
        kept = kept_latent(final_decay)
        if form.data:
            if rule is Rule.INNER:  # all weight on the inner node's prediction (DPM-Solver++ SDE at large eta)
                return 0.0, tuple(alpha_t if lam != lam_s else 0.0 for lam in node_lams), 0.0
            return kept * alpha_t / alpha_s, ((1.0 - kept) * alpha_t,), 0.0
        return alpha_t / alpha_s, (-(1.0 - kept) * alpha_t * sigma_s / alpha_s,), 0.0
    h = lam_t - lam_s
    scale = form.scale(alpha_t, sigma_t)
    if h == 0.0:  # only diffusers' grids keep a zero-length step (UniPC's): IEEE numbers, the plan reports them
        with np.errstate(divide="ignore", invalid="ignore"):
            nodes = [0.0 if lam == lam_s else float(np.float64(lam - lam_s) / np.float64(h)) for lam in node_lams]
    else:
        nodes = [(lam - lam_s) / h for lam in node_lams]
    if rule is Rule.EXACT:
        b = lagrange_weights(form, h, scale, nodes)
    elif rule is Rule.MIDPOINT:
        b = midpoint_weights(form, h, scale, nodes)
    elif rule is Rule.UNIPC:
        b = unipc_weights(form, h, alpha_t, sigma_t, nodes, variant)
    elif rule is Rule.INNER:
        w0 = form.scale(alpha_t, sigma_t) * h * kernel_moments(form.kappa, h, 1)[0]
        b = [w0 if node != 0.0 else 0.0 for node in nodes]
    else:  # published multistep: DPM-Solver's differences over consecutive grid points
        order = len(nodes)
        w0, w1, w2 = difference_weights(form, h, scale, order, "published", solver_type)
        r0 = -nodes[1] if order > 1 else 1.0
        r1 = nodes[1] - nodes[2] if order > 2 else 1.0
        b = differences_to_linear(order, w0, w1, w2, r0, r1)
    return form.a(alpha_s, sigma_s, alpha_t, sigma_t, h), tuple(float(v) for v in b), form.c(sigma_t, h)


def row_weights(cfg: SolverConfig, schedule: Schedule, evaluations, spec: RowSpec, row: int, sigmas: np.ndarray):
    """(a, b, c): anchor weight, weights on spec.reads, noise standard deviation."""
    here = evaluations[row]
    if spec.rule is Rule.COMPAT:
        a, b, c, _, _ = diffusers_step_weights(cfg, sigmas, here.step, spec.order)
        return a, b, c
    if spec.rule is Rule.COMPAT_SINGLESTEP:
        return diffusers_singlestep_weights(cfg, sigmas, here.step, spec.order)
    start = evaluations[row if spec.anchor is None else spec.anchor]
    node_lams = [evaluations[r].lam for r in spec.reads]
    if spec.ancestral:
        return ancestral_weights(spec.rule, start.lam, spec.target, node_lams, cfg.sde_eta, schedule.alpha_sigma)
    form = algo_form("dpmsolver++" if cfg.ancestral else cfg.algo, cfg.sde_eta)
    return update_weights(form, spec.rule, start.lam, spec.target, node_lams, cfg.solver_type, noise_level=schedule.alpha_sigma,
                          variant=cfg.unic_variant, final_decay=cfg.final_decay)


def correction_weights(cfg: SolverConfig, schedule: Schedule, evaluations, correction: Correction, row: int):
    """(a, b) of UniC's corrected latent at row's grid point: from the start row's lambda to this row's, through correction.reads."""
    node_lams = [evaluations[r].lam for r in correction.reads]
    a, b, _ = update_weights(algo_form(cfg.algo), correction.rule, evaluations[correction.start].lam, evaluations[row].lam,
                             node_lams, noise_level=schedule.alpha_sigma, variant=cfg.unic_variant)
    return a, b


def ancestral_weights(rule: Rule, lam_s: float, lam_t: float, node_lams, eta: float, noise_level):
    """(a, b, c) of an ancestral step: the data-prediction ODE update to lambda_down, rescaled from its
    noise level to lambda_t's (x / alpha is the same point in sigma space), plus alpha_t * sigma_up noise."""
    lam_down, sigma_up = ancestral_split(lam_s, lam_t, eta)
    a, b, _ = update_weights(algo_form("dpmsolver++"), rule, lam_s, lam_down, node_lams, noise_level=noise_level)
    alpha_t, alpha_down = noise_level(lam_t)[0], noise_level(lam_down)[0]
    scale = alpha_t / alpha_down
    return a * scale, tuple(v * scale for v in b), alpha_t * sigma_up


# ---------------------------------------------------------------- rows: storage and folding


@dataclass(frozen=True)
class _Storage:
    """What the history does around one row."""

    keep: bool  # later rows read this row's output
    history_after: int  # stored outputs still read after this row
    sets_anchor: bool  # later rows start from this row's input latent
    positions: dict  # row read -> its place in the history (0 most recent)


def _storage(specs: list[RowSpec]) -> list[_Storage]:
    count = len(specs)
    readers: dict[int, list[int]] = {}
    anchors = set()
    for r, spec in enumerate(specs):
        for e in _all_reads(spec):
            if e != r:
                readers.setdefault(e, []).append(r)
        if spec.anchor is not None and spec.anchor != r:
            anchors.add(spec.anchor)
        if spec.corrector is not None:
            anchors.add(spec.corrector.start)
    keep = [bool(readers.get(r)) for r in range(count)]
    stored_before = np.concatenate([[0], np.cumsum(keep)])  # stored rows among 0 .. r-1
    # After row r the history must still hold every stored output a later row reads: from the
    # oldest one still to be read, everything stored since.
    oldest = [r + 1 for r in range(count)]
    for e in sorted(readers):
        for r in range(e, max(readers[e])):
            oldest[r] = min(oldest[r], e)
    return [
        _Storage(
            keep=keep[r],
            history_after=int(stored_before[r + 1] - stored_before[min(oldest[r], r + 1)]),
            sets_anchor=r in anchors,
            positions={e: int(stored_before[r] - stored_before[e + 1]) for e in _all_reads(spec) if e != r},
        )
        for r, spec in enumerate(specs)
    ]


def _all_reads(spec: RowSpec) -> tuple[int, ...]:
    """Every row whose output this row weighs: its update's, and its correction's."""
    return spec.reads + (spec.corrector.reads if spec.corrector is not None else ())


def make_rows(cfg: SolverConfig, schedule: Schedule, evaluations, specs: list[RowSpec], sigmas: np.ndarray) -> tuple[StepCoefficients, ...]:
    rows: list[StepCoefficients] = []
    for r, (spec, storage) in enumerate(zip(specs, _storage(specs))):
        weights = row_weights(cfg, schedule, evaluations, spec, r, sigmas)
        # the conversion of this row's model output uses the noise level of its own evaluation
        if spec.rule.compat:
            # diffusers converts with its float32 alpha and sigma
            alpha_s, sigma_s = (float(v) for v in alpha_sigma32(sigmas[evaluations[r].step], cfg.process)[:2])
        else:
            alpha_s, sigma_s = schedule.alpha_sigma(evaluations[r].lam)
        corrected = None if spec.corrector is None else correction_weights(cfg, schedule, evaluations, spec.corrector, r)
        row = _make_row(cfg, schedule, spec, index=r, evaluation=evaluations[r], weights=weights, alpha_s=alpha_s,
                        sigma_s=sigma_s, storage=storage, previous=rows, corrected=corrected)
        a, b, c = weights
        if corrected is not None:
            b = (*b, corrected[0], *corrected[1])
        if not all(math.isfinite(v) for v in (a, c, *b)):
            row = replace(row, failure=_failure(evaluations, spec, r, sigmas))
        rows.append(row)
    return _number_noise(rows, specs, sigmas)


def noise_draws_per_step(rows) -> int:
    """The most noise draws any grid step of these rows takes (1 when none takes any)."""
    return max(Counter(row.step for row in rows if row.c != 0.0).values(), default=1)


def _number_noise(rows: list[StepCoefficients], specs: list[RowSpec], sigmas: np.ndarray) -> tuple[StepCoefficients, ...]:
    """Give every row that injects noise its draw (see StepCoefficients.noise_index) and its sigma interval."""
    per_step = noise_draws_per_step(rows)
    taken: Counter = Counter()
    for r, (row, spec) in enumerate(zip(rows, specs)):
        if row.c == 0.0:
            continue
        span = spec.noise_sigmas or (float(sigmas[row.step]), float(sigmas[row.step + 1]))
        rows[r] = replace(row, noise_index=per_step * row.step + taken[row.step], noise_sigmas=span)
        taken[row.step] += 1
    return tuple(rows)


def _failure(evaluations, spec: RowSpec, r: int, sigmas: np.ndarray) -> str:
    """Why row r's weights are not finite: the zero-length grid step its update divides by, if any."""
    here = evaluations[r]
    where = f"step {here.step} (timestep {as_number(here.timestep)}"
    steps = sorted({evaluations[e].step for e in spec.reads} | {here.step}, reverse=True)
    zero = [j for j in steps if j + 1 < len(sigmas) and sigmas[j + 1] == sigmas[j]]
    if not zero:
        return f"{where}): the update's weights are not finite (NaN or Inf)"
    j = zero[0]
    step_times = {e.step: e.timestep for e in evaluations if e.stage == 0}
    t_j, t_next = step_times.get(j), step_times.get(j + 1)
    if t_next is not None and t_next == t_j:
        why = f"timestep {as_number(t_j)} repeats, so step {j} has zero length"
    elif t_next is None:
        why = f"the last step ({j}) has zero length (its final sigma {sigmas[j]:.6g} repeats)"
    else:
        why = f"step {j} has zero length (sigma {sigmas[j]:.6g} at timesteps {as_number(t_j)} and {as_number(t_next)})"
    divides = "its update divides by h = 0" if j == here.step else f"its order-{spec.order} update divides by that step's h = 0"
    return (
        f"{where}): the weights are not finite: {why} and {divides}, where diffusers returns NaN; "
        "use another step count or spacing, or leave compat mode"
    )


def _fold(cfg: SolverConfig, a: float, anchor_slot: int, *, b, reads, p: float, q: float, storage: _Storage, previous) -> dict[int, float]:
    """{source slot: weight} of a * (the latent in anchor_slot) + sum_j b_j m_j, m0 = p x + q out folded in
    (one tensor op fewer per row; thresholded rows read m0 computed in full), history at its stored scale."""
    own = b[0]  # reads starts with this row
    coefs: dict[int, float] = {SRC_X: 0.0, anchor_slot: 0.0}
    coefs[anchor_slot] += a
    if cfg.thresholding:
        coefs[SRC_OUT] = own
    else:
        coefs[SRC_X] += own * p
        coefs[SRC_OUT] = own * q
    for e, weight in zip(reads[1:], b[1:]):
        coefs[SRC_HISTORY + storage.positions[e]] = weight * previous[e].store_scale
    return {k: v for k, v in coefs.items() if v != 0.0}


def _make_row(cfg: SolverConfig, schedule: Schedule, spec: RowSpec, *, index: int, evaluation: Evaluation, weights,
              alpha_s: float, sigma_s: float, storage: _Storage, previous, corrected=None) -> StepCoefficients:
    """Fold the conversion of the model output and the history's scales into one linear combination
    (and UniC's correction, ``corrected`` = its (a, b), into another)."""
    a, b, c = weights
    c = c * cfg.s_noise  # k-diffusion's s_noise scales the injected noise only
    form = algo_form(cfg.algo, cfg.sde_eta)
    p, q = schedule.conversion(form.data, cfg.prediction_type, alpha_s, sigma_s)
    x0_p, x0_q = schedule.conversion(True, cfg.prediction_type, alpha_s, sigma_s)
    # a corrected row's update starts from the corrected latent, which solvers.step keeps as the anchor
    from_anchor = spec.corrector is not None or not (spec.anchor is None or spec.anchor == index)
    coefs = _fold(cfg, a, SRC_ANCHOR if from_anchor else SRC_X, b=b, reads=spec.reads, p=p, q=q, storage=storage, previous=previous)
    if cfg.thresholding:
        store_ratio, store_scale = None, 1.0  # m0 is computed and thresholded in full, then kept unscaled
    elif p == 0.0:
        store_ratio, store_scale = None, q
    else:
        store_ratio, store_scale = q / p, p
    correction = ()
    if spec.corrector is not None:
        a_c, b_c = corrected
        correction = tuple(_fold(cfg, a_c, SRC_ANCHOR, b=b_c, reads=spec.corrector.reads, p=p, q=q, storage=storage, previous=previous).items())
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
        index=index,
        step=evaluation.step,
        stage=evaluation.stage,
        order=spec.order,
        p=p,
        q=q,
        x0_p=x0_p,
        x0_q=x0_q,
        anchor=index if spec.anchor is None else spec.anchor,
        target=spec.target,
        a=float(a),
        b=tuple(float(v) for v in b),
        reads=spec.reads,
        c=float(c),
        alpha_s=alpha_s,
        sigma_s=sigma_s,
        input_scale=schedule.input_scale(sigma_s),
        thresholding=cfg.thresholding,
        threshold_ratio=cfg.dynamic_thresholding_ratio,
        threshold_max=cfg.sample_max_value,
        sets_anchor=storage.sets_anchor,
        keep=storage.keep,
        history_after=storage.history_after,
        store_ratio=store_ratio,
        store_scale=store_scale,
        pivot=pivot,
        pivot_coef=float(pivot_coef),
        terms=terms,
        correction=correction,
    )
