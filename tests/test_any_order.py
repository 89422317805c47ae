"""Any order: order-K multistep with exact weights, the singlestep start-up, singlestep DPM-Solver, adaptive steps."""

import math

import numpy as np
import pytest
import torch

from dpmcli import ConfigError, SolverConfig, build_plan
from dpmcli.adaptive import sample_adaptive
from dpmcli.experiment import solve
from dpmcli.models import MixtureModel, ring
from dpmcli.plan import fast_singlestep_orders, order_facts
from dpmcli.reference import ode_solution
from dpmcli.sampler import sample

from test_exactness import DIMS, PolynomialModel, exact_step, polynomial

# a longer non-uniform grid in lambda, inside the Stable Diffusion schedule's range
LAMBDAS = [-2.6, -2.2, -1.5, -1.1, -0.4, 0.0, 0.5, 0.8, 1.4, 1.9, 2.3, 2.9]
SIGMAS = tuple(math.exp(-lam) for lam in LAMBDAS)


def run_polynomial(cfg, degree):
    plan = build_plan(cfg)
    poly, coefs = polynomial(degree)
    x = torch.linspace(-1.0, 1.0, 2 * DIMS, dtype=torch.float64).reshape(2, DIMS)
    inputs = []
    sample(plan, PolynomialModel(plan, poly), x, noise=lambda i, like, scale: torch.zeros_like(like),
           callbacks=(lambda e: inputs.append((e.index, e.x, e.x_next)),))
    return plan, inputs, coefs


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"])
@pytest.mark.parametrize("order", [4, 5, 6])
def test_order_k_multistep_is_exact_for_degree_k_minus_1(algo, order):
    cfg = SolverConfig(algo=algo, order=order, sigmas=SIGMAS, lower_order_final=False, prediction_type="v_prediction")
    plan, calls, coefs = run_polynomial(cfg, order - 1)
    checked = 0
    for index, x, x_next in calls:
        step = plan.rows[index].step
        if plan.orders[step] == order:
            expected = exact_step(algo, LAMBDAS[step], LAMBDAS[step + 1], x.numpy(), coefs)
            np.testing.assert_allclose(x_next.numpy(), expected, rtol=1e-9, atol=1e-10)
            checked += 1
    assert checked == len(LAMBDAS) - order


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [3, 4, 5])
def test_singlestep_startup_block_is_exact_for_degree_k_minus_1(algo, order):
    """Every row of the start-up sweeps and every regular step integrates a degree K-1 prediction exactly."""
    cfg = SolverConfig(algo=algo, order=order, startup="singlestep", coefficients="exact", sigmas=SIGMAS, lower_order_final=False)
    plan, calls, coefs = run_polynomial(cfg, order - 1)
    assert plan.nfe == plan.steps + (order - 2) * (order - 1)
    inputs = {index: x for index, x, _ in calls}
    checked = 0
    for index, x, x_next in calls:
        row = plan.rows[index]
        if row.order == order:
            start = plan.evaluations[row.anchor]
            expected = exact_step(algo, start.lam, row.target, inputs[row.anchor].numpy(), coefs)
            np.testing.assert_allclose(x_next.numpy(), expected, rtol=1e-9, atol=1e-10)
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order, coefficients, degree", [(2, "exact", 1), (3, "exact", 2), (3, "published", 1)])
def test_singlestep_final_stage_exactness(algo, order, coefficients, degree):
    cfg = SolverConfig(algo=algo, method="singlestep", order=order, coefficients=coefficients, sigmas=SIGMAS[:6] + (SIGMAS[6],))
    plan, calls, coefs = run_polynomial(cfg, degree)
    starts = {plan.rows[i].step: x for i, x, _ in calls if plan.rows[i].stage == 0}
    for index, x, x_next in calls:
        row = plan.rows[index]
        if row.stage == order - 1:
            expected = exact_step(algo, LAMBDAS[row.step], LAMBDAS[row.step + 1], starts[row.step].numpy(), coefs)
            np.testing.assert_allclose(x_next.numpy(), expected, rtol=1e-9, atol=1e-10)


def test_published_dpm_solver_3_is_not_exact_for_quadratics():
    cfg = SolverConfig(method="singlestep", order=3, coefficients="published", sigmas=SIGMAS[:4])
    plan, calls, coefs = run_polynomial(cfg, 2)
    index, x, x_next = calls[-1]
    start = calls[-3][1]
    expected = exact_step("dpmsolver++", LAMBDAS[2], LAMBDAS[3], start.numpy(), coefs)
    assert np.abs(x_next.numpy() - expected).max() > 1e-5


MIXTURE = ring()


@pytest.fixture(scope="module")
def ring_problem():
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = build_plan(SolverConfig(steps=10, spacing="logsnr", final_sigma="sigma-min"))
    return x_T, ode_solution(MIXTURE, x_T, float(plan.lambdas[0]), float(plan.lambdas[-1]), rtol=1e-13, atol=1e-15)


def errors(problem, steps, **options):
    x_T, reference = problem
    out, nfes = [], []
    for n in steps:
        x, plan = solve(MIXTURE, x_T, steps=n, spacing="logsnr", final_sigma="sigma-min", lower_order_final=False, **options)
        out.append((x - reference).norm(dim=1).median().item())
        nfes.append(plan.nfe)
    return out, nfes


def slope(x, y):
    return -np.polyfit(np.log(x), np.log(y), 1)[0]


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_singlestep_startup_reaches_the_nominal_order(algo, order, ring_problem):
    steps = [40, 80, 160, 320]
    errs, _ = errors(ring_problem, steps, algo=algo, order=order, coefficients="exact", startup="singlestep")
    assert slope(steps, errs) >= order - 0.3, errs


def test_lower_order_startup_falls_short_at_order_4(ring_problem):
    steps = [40, 80, 160, 320]
    classic, _ = errors(ring_problem, steps, order=4, startup="lower-order")
    started, _ = errors(ring_problem, steps, order=4, startup="singlestep")
    assert slope(steps, classic) < 3.2 < slope(steps, started)
    assert classic[-1] > 3 * started[-1]


@pytest.mark.parametrize("order, coefficients", [(1, "published"), (2, "published"), (2, "exact"), (3, "published"), (3, "exact")])
def test_singlestep_dpm_solver_orders(order, coefficients, ring_problem):
    steps = [20, 40, 80, 160]
    errs, nfes = errors(ring_problem, steps, method="singlestep", order=order, coefficients=coefficients)
    assert nfes == [order * n for n in steps]
    assert abs(slope(steps, errs) - order) < 0.3, errs


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_fast_spends_the_budget(order):
    for nfe in range(3, 31):
        orders = fast_singlestep_orders(nfe, order)
        assert sum(orders) == nfe and max(orders) <= order
        plan = build_plan(SolverConfig(method="singlestep", order=order, nfe=nfe, final_sigma="sigma-min"))
        assert plan.nfe == nfe and plan.steps == len(orders)


def test_adaptive_counts_calls_and_meets_tighter_tolerances(ring_problem):
    x_T, _ = ring_problem
    results = []
    for rtol in (0.1, 0.01, 0.001):
        plan = build_plan(SolverConfig(method="adaptive", order=3, rtol=rtol, atol=rtol / 10, final_sigma="sigma-min"))
        calls = []
        model = MixtureModel(MIXTURE, plan.schedule)
        counting = lambda x, t: calls.append(t) or model(x, t)
        result = sample_adaptive(plan, counting, x_T.clone())
        reference = ode_solution(MIXTURE, x_T, float(plan.lambdas[0]), float(plan.schedule.lambda_at(0.0)))
        error = (result.samples - reference).norm(dim=1).median().item()
        assert result.nfe == len(calls) and result.accepted >= 1
        assert all(a["accepted"] == (a["error"] <= 1) for a in result.attempts)
        results.append((error, result.nfe))
    (e1, n1), (e2, n2), (e3, n3) = results
    assert e1 > e2 > e3 and n1 < n2 < n3


def test_adaptive_final_sigma_zero_ends_with_the_data_prediction():
    plan = build_plan(SolverConfig(method="adaptive", order=2))
    model = MixtureModel(MIXTURE, plan.schedule)
    result = sample_adaptive(plan, model, torch.randn(64, 2, dtype=torch.float64))
    # every attempt costs its two calls, except that a retry after a rejection reuses the first;
    # the step to sigma 0 adds one call
    first_tries = sum(1 for i, a in enumerate(result.attempts) if i == 0 or result.attempts[i - 1]["accepted"])
    retries = len(result.attempts) - first_tries
    assert result.nfe == 2 * first_tries + retries + 1 == result.attempts[-1]["nfe"] + 1
    # the samples sit on the ring: the last call returned E[x0 | x], no noise left
    assert abs(result.samples.norm(dim=1).mean().item() - 1.0) < 0.1


@pytest.mark.parametrize(
    "changes",
    [
        {"order": 5, "steps": 4},
        {"method": "singlestep", "order": 4},
        {"method": "adaptive", "atol": 0.0},
        {"method": "adaptive", "algo": "sde-dpmsolver++"},
        {"method": "rk4"},
        {"startup": "singlestep", "order": 3, "algo": "sde-dpmsolver"},
        {"nfe": 10},
    ],
)
def test_invalid_method_options(changes):
    with pytest.raises(ConfigError):
        build_plan(SolverConfig(**changes))


@pytest.mark.parametrize("options, converges", [
    ({"order": 3, "coefficients": "published"}, 2),
    ({"order": 3, "coefficients": "exact"}, 3),
    ({"order": 4, "coefficients": "exact"}, 2),
    ({"order": 4, "coefficients": "exact", "startup": "singlestep"}, 4),
    ({"method": "singlestep", "order": 3}, 3),
    ({"method": "adaptive", "order": 3}, 3),
])
def test_one_function_gives_a_configs_order_and_its_note(options, converges):
    plan = build_plan(SolverConfig(**options))
    assert order_facts(plan.config) == (plan.convergence_order, plan.order_note)
    assert plan.convergence_order == converges
    if plan.config.method == "multistep":
        assert f"order {converges}" in plan.order_note or f"order at {converges}" in plan.order_note
