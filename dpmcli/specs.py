"""The row specs of each method: where its model calls happen and how each call's output latent is formed.

Multistep (with the classic or the singlestep start-up), singlestep DPM-Solver, diffusers'
singlestep groups and the ancestral methods each turn a grid into :class:`~dpmcli.rows.Evaluation`
records and :class:`~dpmcli.rows.RowSpec` records; :func:`dpmcli.rows.make_rows` weighs them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .coefficients import ancestral_split
from .config import PUBLISHED_MAX_ORDER, SolverConfig
from .kdiffusion import stage_sigmas
from .rows import Correction, Evaluation, RowSpec, Rule
from .schedule import Schedule

# Intermediate points of the singlestep DPM-Solvers, as fractions of the step in lambda.
SINGLESTEP_NODES = {1: (0.0,), 2: (0.0, 0.5), 3: (0.0, 1.0 / 3.0, 2.0 / 3.0)}


def grid_evaluations(timesteps, sigmas, lam) -> tuple[Evaluation, ...]:
    """One evaluation at every grid point (multistep, diffusers' singlestep)."""
    return tuple(Evaluation(k, 0, float(lam[k]), float(timesteps[k]), float(sigmas[k])) for k in range(len(timesteps)))


def multistep_spec(cfg: SolverConfig, k: int, order: int, reads: list[int], lam: np.ndarray) -> RowSpec:
    if cfg.compat == "diffusers":
        rule = Rule.UNIPC if cfg.corrector == "unic" else Rule.COMPAT  # UniPCMultistepScheduler's UniP, or DPMSolver's
    elif cfg.compat == "k-diffusion" and cfg.order == 3 and order == 2:
        rule = Rule.EXACT  # dpmpp_3m_sde's second step: phi_2 on the difference, the exact order-2 weight
    elif cfg.coefficients == "published" and order <= PUBLISHED_MAX_ORDER:
        rule = Rule.PUBLISHED
    else:
        rule = Rule.EXACT
    return RowSpec(order, None, float(lam[k + 1]), tuple(reads), rule)


def multistep_specs(cfg: SolverConfig, orders, lam: np.ndarray) -> list[RowSpec]:
    """One row per grid step, reading the outputs of the ``order - 1`` steps before it.

    With ``--corrector unic`` every row but the first is corrected first: the latent at grid point k
    again, from k-1's, through the outputs at k, k-1, ..., k-p (p the order of the step that got there).
    """
    specs = [multistep_spec(cfg, k, int(o), list(range(k, k - int(o), -1)), lam) for k, o in enumerate(orders)]
    if cfg.corrector == "none":
        return specs
    rule = Rule.EXACT if cfg.coefficients == "exact" else Rule.UNIPC
    return [spec if k == 0 else replace(spec, corrector=Correction(k - 1, tuple(range(k, k - int(orders[k - 1]) - 1, -1)), rule))
            for k, spec in enumerate(specs)]


def compat_singlestep_specs(orders, lam: np.ndarray) -> list[RowSpec]:
    """diffusers' singlestep groups: grid point k ends a group of ``order`` points begun at its anchor."""
    return [
        RowSpec(int(o), None if o == 1 else k - int(o) + 1, float(lam[k + 1]), tuple(range(k, k - int(o), -1)), Rule.COMPAT_SINGLESTEP)
        for k, o in enumerate(orders)
    ]


def startup_specs(cfg: SolverConfig, timesteps, sigmas, lam, orders):
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
    specs: list[RowSpec] = []
    latest: dict[int, int] = {}  # grid point -> its latest evaluation (row)

    def add(step: int, stage: int, spec: RowSpec) -> None:
        latest[step] = len(evaluations)
        evaluations.append(Evaluation(step, stage, float(lam[step]), float(timesteps[step]), float(sigmas[step])))
        specs.append(spec)

    def all_nodes(current: int) -> tuple[int, ...]:
        return (current,) + tuple(latest[g] for g in range(k_order - 1, -1, -1) if latest.get(g) != current)

    for k in range(k_order - 1):  # the warm-up pass
        order = k + 1
        row = len(evaluations)
        add(k, 0, multistep_spec(cfg, k, order, [row] + [latest[g] for g in range(k - 1, k - order, -1)], lam))
    for sweep in range(sweeps + 1):  # sweep 0 evaluates grid point K-1 for the first time
        for j in (range(k_order - 1, k_order) if sweep == 0 else range(1, k_order)):
            row = len(evaluations)
            latest[j] = row
            if j < k_order - 1:
                spec = RowSpec(k_order, 0, float(lam[j + 1]), all_nodes(row), Rule.EXACT)
            elif sweep < sweeps:
                spec = RowSpec(k_order, 0, float(lam[1]), all_nodes(row), Rule.EXACT)
            else:  # the block is done: the first regular order-K step
                spec = multistep_spec(cfg, j, int(orders[j]), [row] + [latest[g] for g in range(j - 1, j - int(orders[j]), -1)], lam)
            del latest[j]
            add(j, sweep, spec)
    for k in range(k_order, n):
        order = int(orders[k])
        row = len(evaluations)
        add(k, 0, multistep_spec(cfg, k, order, [row] + [latest[g] for g in range(k - 1, k - order, -1)], lam))
    orders = orders.copy()
    orders[: k_order - 1] = k_order  # the start-up block reaches order K
    return tuple(evaluations), specs, orders


def singlestep_specs(cfg: SolverConfig, schedule: Schedule, timesteps, sigmas, lam, orders):
    """DPM-Solver-1/2/3: intermediate evaluations at the papers' fractions of each step."""
    evaluations: list[Evaluation] = []
    specs: list[RowSpec] = []
    for k, order in enumerate(int(o) for o in orders):
        nodes = SINGLESTEP_NODES[order]
        h = float(lam[k + 1] - lam[k])
        first = len(evaluations)
        for j, c in enumerate(nodes):
            if j == 0:
                evaluations.append(Evaluation(k, 0, float(lam[k]), float(timesteps[k]), float(sigmas[k])))
            else:
                lam_j = float(lam[k]) + c * h
                evaluations.append(Evaluation(k, j, lam_j, float(schedule.timestep_at(lam_j)), float(schedule.sigma_of(lam_j))))
            row = first + j
            last = j == len(nodes) - 1
            target = float(lam[k + 1]) if last else float(lam[k]) + nodes[j + 1] * h
            anchor = None if j == 0 else first
            if not last:
                # the way to the next node: exact through the nodes so far (first order from the grid point)
                reads, rule = tuple(range(row, first - 1, -1)), Rule.EXACT
            elif order == 1:
                reads, rule = (row,), Rule.EXACT
            elif order == 2:
                reads, rule = (row, first), (Rule.EXACT if cfg.coefficients == "exact" else Rule.MIDPOINT)
            elif cfg.coefficients == "exact":
                reads, rule = (row, first + 1, first), Rule.EXACT
            else:  # published DPM-Solver-3: linear through the grid point and the 2/3 node
                reads, rule = (row, first), Rule.EXACT
            specs.append(RowSpec(order, anchor, target, reads, rule))
    return tuple(evaluations), specs


def ancestral_specs(cfg: SolverConfig, schedule: Schedule, timesteps, sigmas, lam, orders):
    """--method ancestral (DPM-Solver++(1)/(2S) ancestral) and DPM-Solver++ SDE (singlestep sde-dpmsolver++).

    Ancestral: the ODE step from lambda_k down to lambda_down (ancestral_split), first order or
    2S (one evaluation at the lambda-midpoint of that shorter step), then noise up to lambda_{k+1}.
    DPM-Solver++ SDE: the way to the midpoint of the whole step is itself an ancestral step, and
    the update reads the midpoint's output only. Where the ODE part reaches sigma 0, an ancestral
    step is first order (one call) and DPM-Solver++ SDE lands on the midpoint's data prediction,
    as k-diffusion takes them. Returns (orders, evaluations, specs).
    """
    eta, sde = cfg.sde_eta, cfg.method == "singlestep"
    orders = np.array(orders, dtype=np.int64)
    evaluations: list[Evaluation] = []
    specs: list[RowSpec] = []
    for k in range(len(timesteps)):
        lam_s, lam_t = float(lam[k]), float(lam[k + 1])
        lam_down = ancestral_split(lam_s, lam_t, eta)[0]
        reaches_zero = not math.isfinite(lam_down)
        if reaches_zero and not sde:
            orders[k] = 1
        order, first = int(orders[k]), len(evaluations)
        evaluations.append(Evaluation(k, 0, lam_s, float(timesteps[k]), float(sigmas[k])))
        span = (float(sigmas[k]), float(sigmas[k + 1]))
        if order == 1:
            specs.append(RowSpec(1, None, lam_t, (first,), Rule.EXACT, ancestral=True, noise_sigmas=span))
            continue
        lam_node = lam_s + 0.5 * ((lam_t if sde else lam_down) - lam_s)
        node_sigma = float(schedule.sigma_of(lam_node))
        evaluations.append(Evaluation(k, 1, lam_node, float(schedule.timestep_at(lam_node)), node_sigma))
        if sde:
            # the noise intervals' ends as k-diffusion computes them where the grid column is exp(-lambda)
            start, node, end = (span[0], node_sigma, span[1]) if schedule.process == "flow" else stage_sigmas(*span)
            specs.append(RowSpec(2, None, lam_node, (first,), Rule.EXACT, ancestral=True, noise_sigmas=(start, node)))
            span = (start, end)
        else:
            specs.append(RowSpec(2, None, lam_node, (first,), Rule.EXACT))
        # landing on sigma 0 there is no polynomial to integrate: the midpoint's data prediction, as k-diffusion
        rule = Rule.EXACT if cfg.coefficients == "exact" and not reaches_zero else Rule.INNER
        specs.append(RowSpec(2, first, lam_t, (first + 1, first), rule, ancestral=True, noise_sigmas=span))
    return orders, tuple(evaluations), specs
