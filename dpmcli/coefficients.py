"""The weights of every multistep update, computed once per step in float64.

Every update of the family has the same linear shape (docs/mathematics.md derives it)::

    x_next = a * x + sum_j b_j * m_j + c * z

where m_j are the last model outputs in the form the algorithm integrates (x0 for the
++ algorithms, eps otherwise), most recent first, and z is standard Gaussian noise.
``b_j = S * integral_0^h exp(-kappa (h - u)) L_j(u) du`` with L_j the Lagrange basis through
the history nodes in lambda. The four algorithms differ only in (kappa, S, a, c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_TAYLOR_RADIUS = 1.0
_TAYLOR_TERMS = 30


def phi_functions(z: float, count: int) -> list[float]:
    """[phi_1(z), ..., phi_count(z)] with phi_k(z) = sum_m z^m / (m + k)!, stable near z = 0."""
    if abs(z) < _TAYLOR_RADIUS:
        out = []
        for k in range(1, count + 1):
            term = 1.0 / math.factorial(k)
            total = term
            for m in range(1, _TAYLOR_TERMS):
                term *= z / (m + k)
                total += term
            out.append(total)
        return out
    # phi_{k+1}(z) = (phi_k(z) - 1/k!) / z loses nothing once |z| >= 1.
    out = [math.expm1(z) / z]
    for k in range(1, count):
        out.append((out[-1] - 1.0 / math.factorial(k)) / z)
    return out


def kernel_moments(kappa: float, h: float, count: int) -> list[float]:
    """I_n = integral_0^1 exp(-kappa h (1 - v)) v^n dv = n! phi_{n+1}(-kappa h), n = 0..count-1."""
    phis = phi_functions(-kappa * h, count)
    return [math.factorial(n) * p for n, p in enumerate(phis)]


@dataclass(frozen=True)
class AlgoForm:
    """How one algorithm turns (alpha, sigma, h) into the pieces of the linear update.

    ``eta`` is the share of reverse-SDE noise (docs/mathematics.md, "Any eta"): 0 for the ODE
    algorithms, 1 for the full SDE of sde-dpmsolver(++), and any eta >= 0 in between or beyond.
    """

    name: str
    data: bool  # integrates x0 (True) or eps (False)
    eta: float = 0.0

    @property
    def sde(self) -> bool:
        return self.eta > 0.0

    @property
    def kappa(self) -> float:
        """The exponential kernel exp(-kappa (lambda_t - lambda)): 1 + eta for x0, -1 for eps."""
        return 1.0 + self.eta if self.data else -1.0

    def scale(self, alpha_t: float, sigma_t: float) -> float:
        factor = 1.0 + self.eta
        return factor * alpha_t if self.data else -factor * sigma_t

    def a(self, alpha_s: float, sigma_s: float, alpha_t: float, sigma_t: float, h: float) -> float:
        if self.data:
            ratio = sigma_t / sigma_s
            return ratio * math.exp(-self.eta * h) if self.sde else ratio
        return alpha_t / alpha_s

    def c(self, sigma_t: float, h: float) -> float:
        if not self.sde:
            return 0.0
        if self.data:
            return sigma_t * math.sqrt(-math.expm1(-2.0 * self.eta * h))
        return sigma_t * math.sqrt(self.eta * math.expm1(2.0 * h))


FORMS = {
    "dpmsolver++": AlgoForm("dpmsolver++", True),
    "dpmsolver": AlgoForm("dpmsolver", False),
    "sde-dpmsolver++": AlgoForm("sde-dpmsolver++", True, 1.0),
    "sde-dpmsolver": AlgoForm("sde-dpmsolver", False, 1.0),
}


def algo_form(algo: str, eta: float | None = None) -> AlgoForm:
    """The form of ``algo``; for the SDE algorithms at ``eta`` (None: 1, the full SDE)."""
    form = FORMS[algo]
    if not form.sde or eta is None or eta == form.eta:
        return form
    return AlgoForm(form.name, form.data, float(eta))


def ancestral_split(lam_s: float, lam_t: float, eta: float) -> tuple[float, float]:
    """(lambda_down, sigma_up) of an ancestral step from lambda_s to lambda_t, in sigma = exp(-lambda).

    The ODE step goes down to sigma_down <= sigma_t; noise of std sigma_up brings it back to sigma_t,
    sigma_down^2 + sigma_up^2 = sigma_t^2, with sigma_up = min(sigma_t, eta sigma_t sqrt(1 - sigma_t^2 / sigma_s^2))
    (k-diffusion's get_ancestral_step). lambda_down is inf when the ODE step reaches sigma 0.
    """
    sigma_s, sigma_t = math.exp(-lam_s), math.exp(-lam_t)
    if eta == 0.0 or sigma_t == 0.0:
        return lam_t, 0.0
    sigma_up = min(sigma_t, eta * math.sqrt(sigma_t**2 * (sigma_s**2 - sigma_t**2) / sigma_s**2))
    sigma_down = math.sqrt(sigma_t**2 - sigma_up**2)
    return (-math.log(sigma_down) if sigma_down > 0.0 else math.inf), sigma_up


def lagrange_basis(nodes: np.ndarray) -> np.ndarray:
    """B[j, n]: coefficient of v^n in the Lagrange polynomial that is 1 at nodes[j], 0 at the others."""
    k = len(nodes)
    basis = np.zeros((k, k))
    for j in range(k):
        others = np.delete(nodes, j)
        poly = np.poly(others) if k > 1 else np.array([1.0])  # highest power first
        poly = poly / np.prod(nodes[j] - others)
        basis[j] = poly[::-1]
    return basis


def lagrange_weights(form: AlgoForm, h: float, scale: float, nodes) -> list[float]:
    """Weights b_j with S * integral_0^h exp(-kappa (h - u)) P(u) du = sum_j b_j P(nodes[j] * h).

    Exact whenever P is a polynomial of degree len(nodes) - 1; ``nodes`` are positions in units
    of h measured from the start of the integral (0 is the start, negative is history, values
    in (0, 1] are points inside the step).
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    moments = np.array(kernel_moments(form.kappa, h, len(nodes)))
    return list(scale * h * (lagrange_basis(nodes) @ moments))


def exact_weights(form: AlgoForm, h: float, scale: float, ratios: list[float]) -> list[float]:
    """Multistep Lagrange weights b_j (most recent first), exact for polynomials of degree len(ratios).

    ``ratios[j] = (lambda_{i-j} - lambda_{i-j-1}) / h``: the earlier step sizes relative to h.
    """
    return lagrange_weights(form, h, scale, -np.concatenate([[0.0], np.cumsum(ratios)]))


def difference_weights(form: AlgoForm, h: float, scale: float, order: int, coefficients: str, solver_type: str):
    """(W0, W1, W2): weights on D0, D1, D2 of the published / exact difference-form updates.

    D1 approximates h x0' and D2 approximates h^2 x0''/2 (docs/mathematics.md), so the exact
    weights are S h I_n. The published second order with ``midpoint`` uses W0/2 for D1, and
    the published third order weights D2 by half of its exact value.
    """
    moments = kernel_moments(form.kappa, h, 3)
    exact = [scale * h * m for m in moments]
    w1 = exact[1]
    if order == 2 and coefficients == "published" and solver_type == "midpoint":
        w1 = 0.5 * exact[0]
    w2 = exact[2] if coefficients == "exact" else 0.5 * exact[2]
    return exact[0], w1, w2


def midpoint_weights(form: AlgoForm, h: float, scale: float, nodes) -> list[float]:
    """Singlestep DPM-Solver-2 as published: W0 on m0 plus W0/2 on (m1 - m0)/r1.

    ``nodes`` are the start (0) and the inner node r1, in either order; the weights follow them.
    """
    w0 = difference_weights(form, h, scale, 1, "published", "midpoint")[0]
    r1 = max(nodes)
    inner = 0.5 * w0 / r1
    return [inner if r != 0.0 else w0 - 0.5 * w0 / r1 for r in nodes]


def unipc_weights(form: AlgoForm, h: float, alpha_t: float, sigma_t: float, nodes, variant: str) -> list[float]:
    """UniPC's published B(h) weights on the model outputs at ``nodes`` (units of h from the step's start).

    0 is the start's output m0, negative nodes are history, 1 is the step's end (UniC's corrector).
    The update is the first-order step plus -Y_t B(h) sum_k rho_k (m_k - m0) / r_k, Y_t = alpha_t
    (data) or sigma_t (noise), with rho solving sum_k rho_k r_k^i = (i+1)! z phi_{i+2}(z) / B(h),
    z = -kappa h, for i < K (K nodes besides 0), and rho = 1/2 when K = 1 (docs/mathematics.md).
    """
    z = -form.kappa * h
    others = [(j, r) for j, r in enumerate(nodes) if r != 0.0]
    count = len(others)
    phis = phi_functions(z, count + 1)
    y_t = alpha_t if form.data else sigma_t
    bh = z if variant == "bh1" else math.expm1(z)
    weights = [0.0] * len(nodes)
    weights[nodes.index(0.0)] = -y_t * math.expm1(z)
    if count == 0:
        return weights
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # IEEE numbers throughout: a zero-length step of a diffusers grid gives NaN weights, which the plan reports
        if count == 1:
            rho = np.array([0.5])
        else:
            powers = np.array([[np.float64(r) ** i for _, r in others] for i in range(count)])
            rhs = np.array([math.factorial(i + 1) * np.float64(z) * phis[i + 1] / np.float64(bh) for i in range(count)])
            try:
                rho = np.linalg.solve(powers, rhs)
            except np.linalg.LinAlgError:  # coinciding nodes
                rho = np.full(count, np.nan)
        for (j, r), rho_k in zip(others, rho):
            share = np.float64(y_t) * np.float64(bh) * rho_k / np.float64(r)
            weights[j] -= float(share)
            weights[nodes.index(0.0)] += float(share)
    return weights


def conversion(data: bool, prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(p, q) with (x0 if data else eps) = p * x + q * model_output, at noise level (alpha, sigma)."""
    if prediction_type == "flow_prediction":
        # v = eps - x0 on the flow path (alpha + sigma = 1): x0 = x - sigma v, eps = x + alpha v
        return (1.0, -sigma) if data else (1.0, alpha)
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


def prediction_of(prediction_type: str, x0, eps, alpha, sigma):
    """What a network of ``prediction_type`` outputs at x = alpha x0 + sigma eps (the inverse of :func:`conversion`)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow_prediction":
        return eps - x0  # the velocity of the flow path, d x / d s
    return alpha * eps - sigma * x0  # v_prediction


def differences_to_linear(order: int, w0: float, w1: float, w2: float, r0: float, r1: float) -> list[float]:
    """Expand W0 D0 + W1 D1 + W2 D2 into weights on m0, m1, m2 (DPM-Solver's D1, D2 definitions).

    Plain arithmetic on whatever floats it is given: numpy floats follow IEEE rules (a zero ratio
    gives Inf/NaN, as diffusers' tensors do), which compat mode relies on for zero-length steps.
    """
    if order == 1:
        return [w0]
    if order == 2:
        return [w0 + w1 / r0, -w1 / r0]
    s = r0 + r1
    on_d10 = w1 * (1.0 + r0 / s) + w2 / s  # weight on D1_0 = (m0 - m1) / r0
    on_d11 = -w1 * r0 / s - w2 / s  # weight on D1_1 = (m1 - m2) / r1
    return [w0 + on_d10 / r0, -on_d10 / r0 + on_d11 / r1, -on_d11 / r1]
