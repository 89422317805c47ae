"""Fitted convergence orders on the ring mixture against the exact ODE solution (DOP853, rtol 1e-10)."""

import numpy as np
import pytest
import torch

from dpmcli.experiment import solve as run
from dpmcli.models import ring
from dpmcli.reference import ode_solution

STEPS = (20, 40, 80, 160)
MIXTURE = ring()


def solve(algo, order, coefficients, steps, x_T, **options):
    return run(
        MIXTURE, x_T, algo=algo, order=order, coefficients=coefficients, steps=steps,
        spacing="logsnr", final_sigma="sigma-min", lower_order_final=False, **options,
    )


@pytest.fixture(scope="module")
def problem():
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, plan = solve("dpmsolver++", 1, "exact", 10, x_T)
    reference = ode_solution(MIXTURE, x_T, float(plan.lambdas[0]), float(plan.lambdas[-1]))
    return x_T, reference


def fitted_order(algo, order, coefficients, problem):
    x_T, reference = problem
    errors = [(solve(algo, order, coefficients, n, x_T)[0] - reference).norm(dim=1).median().item() for n in STEPS]
    slope = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_exact_coefficients_converge_at_their_order(algo, order, problem):
    slope, errors = fitted_order(algo, order, "exact", problem)
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
def test_published_third_order_converges_at_order_two(algo, problem):
    slope, errors = fitted_order(algo, 3, "published", problem)
    assert abs(slope - 2.0) < 0.3, (slope, errors)


def test_both_second_order_forms_converge_at_order_two(problem):
    for solver_type in ("midpoint", "heun"):
        x_T, reference = problem
        errors = [(solve("dpmsolver++", 2, "published", n, x_T, solver_type=solver_type)[0] - reference).norm(dim=1).median().item() for n in STEPS]
        slope = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
        assert abs(slope - 2.0) < 0.3, (solver_type, slope, errors)
