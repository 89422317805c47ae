"""Does third-order sde-dpmsolver++ converge? Exact, published and diffusers' D2 weight side by side.

With the noise switched off (z = 0) the sde-dpmsolver++ update approximates the drift ODE
dx/dlambda = -(1 + alpha^2) x + 2 alpha x0(x), which scipy's DOP853 solves to rtol 1e-10. The
three variants run on the same plan (ring mixture, logsnr grid, final sigma sigma-min, no
lower-order-final, float64, 512 samples) and differ only in the weight on D2 of every order-3
step: exact, published (half of exact), or diffusers' (published - alpha_t). Prints the median
L2 error for 50..800 steps and the slope over 200-800 steps (docs/mathematics.md, section 4.5).

    python benchmarks/sde_third_order_weights.py          # a few seconds
    python benchmarks/sde_third_order_weights.py gmm64
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy.integrate import solve_ivp

from dpmcli import SolverConfig, build_plan
from dpmcli.coefficients import FORMS, difference_weights, differences_to_linear
from dpmcli.models import MixtureModel, load_mixture
from dpmcli.noise import initial_latents
from dpmcli.schedule import alpha_sigma
from dpmcli.solvers import data_prediction

STEPS = [50, 100, 200, 400, 800]


def config(steps: int, coefficients: str) -> SolverConfig:
    return SolverConfig(
        algo="sde-dpmsolver++", order=3, steps=steps, coefficients=coefficients,
        spacing="logsnr", final_sigma="sigma-min", lower_order_final=False,
    )


def drift_reference(mixture, x_T: torch.Tensor, lam0: float, lam1: float) -> torch.Tensor:
    shape = x_T.shape

    def rhs(lam, y):
        x = torch.from_numpy(y).reshape(shape)
        alpha, sigma = alpha_sigma(lam)
        x0, _ = mixture.denoise(x, alpha, sigma)
        return (-(1 + alpha * alpha) * x + 2 * alpha * x0).reshape(-1).numpy()

    sol = solve_ivp(rhs, (lam0, lam1), x_T.reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-12)
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)


def run(mixture, x_T: torch.Tensor, steps: int, variant: str) -> torch.Tensor:
    plan = build_plan(config(steps, "exact" if variant == "exact" else "published"))
    model = MixtureModel(mixture, plan.schedule)
    x, history = x_T.clone(), []
    for i, row in enumerate(plan.rows):
        weights = list(row.b)
        if variant == "diffusers" and row.order == 3:
            h, alpha_t = float(plan.h[i]), float(plan.alpha_t[i + 1])
            r0 = float((plan.lambdas[i] - plan.lambdas[i - 1]) / h)
            r1 = float((plan.lambdas[i - 1] - plan.lambdas[i - 2]) / h)
            w0, w1, w2 = difference_weights(FORMS["sde-dpmsolver++"], h, 2 * alpha_t, 3, "published", "midpoint")
            weights = differences_to_linear(3, w0, w1, w2 - alpha_t, r0, r1)
        history.insert(0, data_prediction(row, x, model(x, plan.timestep_values[i])))
        x = row.a * x + sum(w * m for w, m in zip(weights, history))  # the drift part: z = 0
    return x


def main() -> None:
    torch.set_num_threads(1)
    mixture = load_mixture(sys.argv[1] if len(sys.argv) > 1 else "ring")
    x_T = initial_latents(0, (512, mixture.dims), "cpu", torch.float64)
    probe = build_plan(config(10, "exact"))
    reference = drift_reference(mixture, x_T, float(probe.lambdas[0]), float(probe.lambdas[-1]))
    print(f"{mixture.name}: median L2 error of the drift (z = 0) vs DOP853, steps {STEPS}")
    for variant in ("exact", "published", "diffusers"):
        errors = [(run(mixture, x_T, n, variant) - reference).norm(dim=1).median().item() for n in STEPS]
        slope = -np.polyfit(np.log(STEPS[2:]), np.log(errors[2:]), 1)[0]
        print(f"  {variant:9s} " + " ".join(f"{e:9.3g}" for e in errors) + f"   slope(200-800) {slope:5.2f}", flush=True)


if __name__ == "__main__":
    main()
