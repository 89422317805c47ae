"""Empirical convergence orders of every ODE solver form on the exact mixtures.

Prints, per algorithm / order / coefficient form, the median per-sample L2 error against the
exact probability-flow ODE solution (scipy DOP853, rtol 1e-10) for 10..160 steps on a logsnr
grid ending at sigma-min (no lower-order-final, float64), and the fitted order over 40-160 steps.

    python benchmarks/convergence_orders.py                 # ring and gmm64, about a minute
    python benchmarks/convergence_orders.py --model ring --samples 512
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dpmcli.experiment import solve
from dpmcli.models import load_mixture
from dpmcli.reference import ode_solution

FORMS = [(1, "exact", "midpoint"), (2, "exact", "midpoint"), (2, "published", "midpoint"), (3, "exact", "midpoint"), (3, "published", "midpoint")]
STEPS = [10, 20, 40, 80, 160]


def run(mixture, algo, order, coefficients, solver_type, steps, x_T):
    return solve(
        mixture, x_T, algo=algo, order=order, coefficients=coefficients, solver_type=solver_type, steps=steps,
        spacing="logsnr", final_sigma="sigma-min", lower_order_final=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="ring, gmm64 or gmm:PATH (repeatable; default ring and gmm64)")
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.model or ["ring", "gmm64"]:
        mixture = load_mixture(name)
        x_T = torch.randn(args.samples, mixture.dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        _, plan = run(mixture, "dpmsolver++", 1, "exact", "midpoint", 10, x_T)
        reference = ode_solution(mixture, x_T, float(plan.lambdas[0]), float(plan.lambdas[-1]))
        print(f"\n{name}: median L2 error vs exact ODE solution, steps {STEPS}")
        for algo in ("dpmsolver++", "dpmsolver"):
            for order, coefficients, solver_type in FORMS:
                errors = [(run(mixture, algo, order, coefficients, solver_type, n, x_T)[0] - reference).norm(dim=1).median().item() for n in STEPS]
                slope = -np.polyfit(np.log(STEPS[2:]), np.log(errors[2:]), 1)[0]
                cells = " ".join(f"{e:8.2e}" for e in errors)
                print(f"  {algo:12s} order {order} {coefficients:9s} {cells}   fitted order {slope:.2f}")


if __name__ == "__main__":
    main()
