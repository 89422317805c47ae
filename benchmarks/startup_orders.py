"""Fitted orders of order-K multistep with the two start-ups, and of singlestep DPM-Solver.

Ring mixture, float64, logsnr grid ending at sigma-min, no lower-order-final, 128 samples; the
error is the median L2 distance to the exact ODE solution (DOP853, rtol 1e-13). The fitted
order is the slope of log error against log steps (multistep) or log NFE (singlestep).

    python benchmarks/startup_orders.py                  # steps 40, 80, 160, 320; under a minute
    python benchmarks/startup_orders.py --model gmm64 --steps 20,40,80,160
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dpmcli.experiment import solve
from dpmcli.models import load_mixture
from dpmcli.reference import ode_solution


def run(mixture, x_T, steps, **options):
    return solve(mixture, x_T, steps=steps, spacing="logsnr", final_sigma="sigma-min", lower_order_final=False, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ring")
    parser.add_argument("--steps", default="40,80,160,320")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixture = load_mixture(args.model)
    steps = [int(s) for s in args.steps.split(",")]
    x_T = torch.randn(args.samples, mixture.dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, plan = run(mixture, x_T, 10)
    reference = ode_solution(mixture, x_T, float(plan.lambdas[0]), float(plan.lambdas[-1]), rtol=1e-13, atol=1e-15)
    cases = [dict(algo=a, order=k, coefficients="exact", startup=s) for a in ("dpmsolver++", "dpmsolver") for k in (2, 3, 4, 5, 6)
             for s in ("lower-order", "singlestep")]
    cases += [dict(algo=a, method="singlestep", order=k, coefficients=c) for a in ("dpmsolver++",) for k in (1, 2, 3)
              for c in ("published", "exact")]
    print(f"{args.model}: median L2 error vs exact ODE solution, steps {steps}")
    for options in cases:
        errors, nfes = [], []
        for n in steps:
            x, plan = run(mixture, x_T, n, **options)
            errors.append((x - reference).norm(dim=1).median().item())
            nfes.append(plan.nfe)
        against = nfes if options.get("method") == "singlestep" else steps
        slope = -np.polyfit(np.log(against), np.log(errors), 1)[0]
        label = " ".join(f"{k}={v}" for k, v in options.items())
        print(f"  {label:70s} " + " ".join(f"{e:9.2e}" for e in errors) + f"   NFE {nfes[0]}..{nfes[-1]}   fitted order {slope:5.2f}")


if __name__ == "__main__":
    main()
