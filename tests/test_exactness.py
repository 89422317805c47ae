"""Each order-k update with --coefficients exact is exact for predictions polynomial of degree k-1 in lambda."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

from dpmcli import SolverConfig, build_plan
from dpmcli.sampler import sample
from dpmcli.solvers import data_prediction, step

# A non-uniform grid in lambda inside the Stable Diffusion schedule's range.
LAMBDAS = [-2.5, -1.9, -1.0, -0.6, 0.2, 0.9, 1.6]
SIGMAS = tuple(math.exp(-lam) for lam in LAMBDAS)
DIMS = 3


def polynomial(degree: int, seed: int = 0):
    rng = np.random.default_rng(seed + degree)
    coefs = rng.normal(size=(degree + 1, DIMS))
    return lambda lam: sum(c * lam**n for n, c in enumerate(coefs)), coefs


class PolynomialModel:
    """Returns whatever model output makes the integrated prediction m0 equal P(lambda)."""

    def __init__(self, plan, poly):
        self.plan, self.poly = plan, poly
        self.calls = 0

    def __call__(self, x, t):
        row = self.plan.rows[self.calls]
        self.calls += 1
        lam = float(self.plan.schedule.lambda_at(float(t)))
        target = torch.as_tensor(self.poly(lam), dtype=x.dtype).expand_as(x)
        return (target - row.p * x) / row.q  # m0 = p x + q out = P(lambda)


def exact_step(algo, lam_s, lam_t, x, coefs):
    """The variation-of-constants solution of one step with prediction P, integrals by quadrature."""
    h = lam_t - lam_s
    alpha = lambda lam: math.sqrt(1 / (1 + math.exp(-2 * lam)))
    sigma = lambda lam: math.sqrt(1 / (1 + math.exp(2 * lam)))
    a_s, s_s, a_t, s_t = alpha(lam_s), sigma(lam_s), alpha(lam_t), sigma(lam_t)
    kappa, scale, a = {
        "dpmsolver++": (1.0, a_t, s_t / s_s),
        "dpmsolver": (-1.0, -s_t, a_t / a_s),
        "sde-dpmsolver++": (2.0, 2 * a_t, s_t / s_s * math.exp(-h)),
        "sde-dpmsolver": (-1.0, -2 * s_t, a_t / a_s),
    }[algo]
    total = a * x
    for n, c in enumerate(coefs):
        integral, _ = quad(lambda u: math.exp(-kappa * (h - u)) * (lam_s + u) ** n, 0.0, h, epsabs=0, epsrel=1e-13)
        total = total + scale * integral * c
    return total


def run_polynomial(algo, order, prediction_type, degree):
    cfg = SolverConfig(
        algo=algo, order=order, coefficients="exact", sigmas=SIGMAS, lower_order_final=False, prediction_type=prediction_type
    )
    plan = build_plan(cfg)
    poly, coefs = polynomial(degree)
    x = torch.linspace(-1.0, 1.0, 2 * DIMS, dtype=torch.float64).reshape(2, DIMS)
    states = [x]
    sample(plan, PolynomialModel(plan, poly), x, noise=lambda i, like, scale: torch.zeros_like(like), callbacks=(lambda e: states.append(e.x_next),))
    return plan, states, coefs


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_exact_update_integrates_polynomials_exactly(algo, order, prediction_type):
    plan, states, coefs = run_polynomial(algo, order, prediction_type, degree=order - 1)
    checked = 0
    for i in range(plan.steps):
        if plan.orders[i] != order:
            continue  # warm-up steps of lower order are not exact for this degree
        expected = exact_step(algo, LAMBDAS[i], LAMBDAS[i + 1], states[i].numpy(), coefs)
        np.testing.assert_allclose(states[i + 1].numpy(), expected, rtol=1e-10, atol=1e-11)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
def test_exact_update_is_not_exact_one_degree_higher(algo):
    """The check above has teeth: one degree more and the same updates miss by far more than round-off."""
    plan, states, coefs = run_polynomial(algo, 2, "epsilon", degree=2)
    i = plan.steps - 1
    expected = exact_step(algo, LAMBDAS[i], LAMBDAS[i + 1], states[i].numpy(), coefs)
    assert np.abs(states[i + 1].numpy() - expected).max() > 1e-6


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
def test_published_third_order_is_not_exact_for_quadratics(algo):
    cfg = SolverConfig(algo=algo, order=3, coefficients="published", sigmas=SIGMAS, lower_order_final=False)
    plan = build_plan(cfg)
    poly, coefs = polynomial(2)
    x = torch.zeros(2, DIMS, dtype=torch.float64)
    states = [x]
    sample(plan, PolynomialModel(plan, poly), x, callbacks=(lambda e: states.append(e.x_next),))
    i = plan.steps - 1
    expected = exact_step(algo, LAMBDAS[i], LAMBDAS[i + 1], states[i].numpy(), coefs)
    assert np.abs(states[i + 1].numpy() - expected).max() > 1e-4


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
def test_variation_of_constants_matches_the_ode_itself(algo):
    """The formula used above solves the probability-flow ODE with prediction P (checked with DOP853)."""
    _, coefs = polynomial(2)
    lam_s, lam_t = -1.3, 0.4
    x_s = np.array([0.3, -0.7, 1.1])
    poly = lambda lam: sum(c * lam**n for n, c in enumerate(coefs))

    def rhs(lam, x):
        a, s = math.sqrt(1 / (1 + math.exp(-2 * lam))), math.sqrt(1 / (1 + math.exp(2 * lam)))
        if algo == "dpmsolver++":
            return a * (poly(lam) - a * x)  # dx/dlambda = alpha (x0 - alpha x)
        return s * s * x - s * poly(lam)  # the same ODE written with eps = (x - alpha x0) / sigma

    ode = solve_ivp(rhs, (lam_s, lam_t), x_s, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
    np.testing.assert_allclose(exact_step(algo, lam_s, lam_t, x_s, coefs), ode, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("algo", ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"])
def test_step_to_sigma_zero_returns_the_data_prediction(algo):
    plan = build_plan(SolverConfig(algo=algo, steps=6, final_sigma="zero"))
    row = plan.rows[-1]
    assert plan.orders[-1] == 1 and row.c == 0.0
    x = torch.randn(4, 2, dtype=torch.float64)
    out = torch.randn(4, 2, dtype=torch.float64)
    x_next, _ = step(row, x, out)
    torch.testing.assert_close(x_next, data_prediction(row, x, out), rtol=1e-12, atol=1e-12)
