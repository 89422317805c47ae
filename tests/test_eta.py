"""--eta and --s-noise on the SDE algorithms: the weights for any eta (docs/mathematics.md, "Any eta").

* eta = 0 is exactly the ODE algorithm and eta = 1 exactly the full SDE that was there before
  (the same plan rows, bit for bit);
* the exact weights integrate degree k-1 polynomials exactly at every eta, in both forms
  (variation of constants by quadrature, with the kernel exp(-(1 + eta) h) of the data form);
* the first-order data-form step keeps a point mass's marginal N(alpha_t x0, sigma_t^2) at every eta;
* dpmcli's published second-order SDE step is k-diffusion's sample_dpmpp_2m_sde (midpoint and heun,
  written here from its published formulas) at every eta and s_noise, on the same injected noise;
* the Brownian path of the data form runs in exp(2 eta lambda), and runs at eta = 0.5 converge strongly;
* `sample --noise brownian` reads that path: its runs at 20 and 160 steps converge to each other;
* bad values are one line, exit 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dpmcli import ConfigError, SolverConfig, build_plan
from dpmcli.brownian import BrownianNoise
from dpmcli.cli.main import app
from dpmcli.coefficients import algo_form
from dpmcli.models import MixtureModel, ring
from dpmcli.rows import Rule, update_weights
from dpmcli.sampler import sample
from test_exactness import LAMBDAS, SIGMAS, PolynomialModel, polynomial

ETAS = [0.0, 0.35, 1.0, 2.0]


def rows_of(**options):
    return build_plan(SolverConfig(steps=10, lower_order_final=False, **options)).rows


@pytest.mark.parametrize("data", [True, False])
@pytest.mark.parametrize("order, coefficients", [(1, "published"), (2, "published"), (3, "published"), (3, "exact")])
def test_eta_zero_is_the_ode_and_eta_one_the_full_sde(data, order, coefficients):
    ode, sde = ("dpmsolver++", "sde-dpmsolver++") if data else ("dpmsolver", "sde-dpmsolver")
    common = dict(order=order, coefficients=coefficients, final_sigma="sigma-min")
    assert rows_of(algo=sde, eta=0.0, **common) == rows_of(algo=ode, **common)
    assert rows_of(algo=sde, eta=1.0, **common) == rows_of(algo=sde, **common)
    assert rows_of(algo=sde, eta=0.5, **common) != rows_of(algo=sde, **common)


def exact_step(data: bool, eta: float, lam_s, lam_t, x, coefs):
    """One step of the linear SDE's mean with prediction P(lambda), by quadrature (the noise term is zero)."""
    h = lam_t - lam_s
    alpha = lambda lam: math.sqrt(1 / (1 + math.exp(-2 * lam)))
    sigma = lambda lam: math.sqrt(1 / (1 + math.exp(2 * lam)))
    a_s, s_s, a_t, s_t = alpha(lam_s), sigma(lam_s), alpha(lam_t), sigma(lam_t)
    if data:  # x0 form: y = x / sigma follows dy = -eta y dl + (1 + eta) e^l x0 dl + noise
        kappa, scale, a = 1.0 + eta, (1.0 + eta) * a_t, s_t / s_s * math.exp(-eta * h)
    else:  # eps form: w = x / alpha follows dw = -(1 + eta) e^-l eps dl + noise
        kappa, scale, a = -1.0, -(1.0 + eta) * s_t, a_t / a_s
    from scipy.integrate import quad

    total = a * x
    for n, c in enumerate(coefs):
        integral, _ = quad(lambda u: math.exp(-kappa * (h - u)) * (lam_s + u) ** n, 0.0, h, epsabs=0, epsrel=1e-13)
        total = total + scale * integral * c
    return total


@pytest.mark.parametrize("data", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("eta", [0.35, 2.0])
def test_exact_weights_integrate_polynomials_exactly_at_any_eta(data, order, eta):
    algo = "sde-dpmsolver++" if data else "sde-dpmsolver"
    plan = build_plan(SolverConfig(algo=algo, eta=eta, order=order, coefficients="exact", sigmas=SIGMAS, lower_order_final=False))
    poly, coefs = polynomial(order - 1)
    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3)
    states = [x]
    sample(plan, PolynomialModel(plan, poly), x, noise=lambda i, like, scale: torch.zeros_like(like),
           callbacks=(lambda e: states.append(e.x_next),))
    checked = 0
    for i in range(plan.steps):
        if plan.orders[i] == order:
            expected = exact_step(data, eta, LAMBDAS[i], LAMBDAS[i + 1], states[i].numpy(), coefs)
            np.testing.assert_allclose(states[i + 1].numpy(), expected, rtol=1e-10, atol=1e-11)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("lam_s, lam_t", [(-2.0, -1.2), (0.3, 2.5)])
def test_first_order_data_step_keeps_a_point_mass_marginal(eta, lam_s, lam_t):
    """x_s = alpha_s x0 + sigma_s eps with x0 fixed: x_t = a x_s + b x0 + c z must be alpha_t x0 + sigma_t N(0, 1)."""
    a, (b,), c = update_weights(algo_form("sde-dpmsolver++", eta), Rule.EXACT, lam_s, lam_t, [lam_s])
    alpha = lambda lam: math.sqrt(1 / (1 + math.exp(-2 * lam)))
    sigma = lambda lam: math.sqrt(1 / (1 + math.exp(2 * lam)))
    assert a * alpha(lam_s) + b == pytest.approx(alpha(lam_t), rel=1e-13)
    assert (a * sigma(lam_s)) ** 2 + c**2 == pytest.approx(sigma(lam_t) ** 2, rel=1e-13)


def kdiffusion_2m_sde(plan, x0_of, x_T, zs, *, eta, s_noise, solver_type):
    """k-diffusion's DPM-Solver++(2M) SDE from its published formulas, in its space x / alpha at sigma / alpha."""
    sig = plan.sigma_t / plan.alpha_t
    x, old, h_last = x_T / plan.alpha_t[0], None, None
    for i in range(plan.steps):
        denoised = x0_of(plan.alpha_t[i] * x, plan.timestep_values[i])
        if sig[i + 1] == 0:
            x = denoised
            continue
        h = math.log(sig[i]) - math.log(sig[i + 1])
        h_eta = h * (1 + eta)
        x = sig[i + 1] / sig[i] * math.exp(-eta * h) * x + (-math.expm1(-h_eta)) * denoised
        if old is not None:
            r = h_last / h
            if solver_type == "midpoint":
                x = x + 0.5 * (-math.expm1(-h_eta)) * (1 / r) * (denoised - old)
            else:
                x = x + ((-math.expm1(-h_eta)) / (-h_eta) + 1) * (1 / r) * (denoised - old)
        if eta:
            x = x + zs[i] * sig[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
        old, h_last = denoised, h
    return x * plan.alpha_t[-1]


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.0), (0.7, 0.8), (1.5, 1.2)])
def test_published_2m_sde_is_k_diffusions_at_any_eta_and_s_noise(solver_type, eta, s_noise):
    cfg = SolverConfig(algo="sde-dpmsolver++", order=2, steps=12, spacing="karras", eta=eta, s_noise=s_noise,
                       solver_type=solver_type, lower_order_final=False)
    plan = build_plan(cfg.validated())
    x_T = torch.randn((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zs = torch.randn((plan.steps, 64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = sample(plan, MixtureModel(ring()).bind(plan), x_T.clone(), noise=lambda i, like, scale: zs[i] * scale).samples
    x0_model = MixtureModel(ring(), plan.schedule, "sample")
    theirs = kdiffusion_2m_sde(plan, lambda x, t: x0_model(x, t), x_T.clone(), zs, eta=eta, s_noise=s_noise, solver_type=solver_type)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-11, atol=1e-12)


def test_brownian_path_of_the_data_form_runs_in_exp_2_eta_lambda():
    plan = build_plan(SolverConfig(algo="sde-dpmsolver++", eta=0.5, steps=8).validated())
    source = BrownianNoise(0, plan, (4, 2))
    finite = np.isfinite(plan.lambdas)
    np.testing.assert_allclose(source.times[finite], np.exp(plan.lambdas[finite]), rtol=1e-15)
    noise_form = BrownianNoise(0, build_plan(SolverConfig(algo="sde-dpmsolver", eta=0.5, steps=8).validated()), (4, 2))
    assert BrownianNoise.tree_key(noise_form.plan, (4, 2)) == BrownianNoise.tree_key(
        build_plan(SolverConfig(algo="sde-dpmsolver", steps=8).validated()), (4, 2))  # exp(-2 lambda) at every eta


def test_sde_runs_at_eta_one_half_converge_strongly():
    result = CliRunner().invoke(app, ["compare", "--model", "ring", "--algo", "sde-dpmsolver++", "--eta", "0.5", "--order", "1",
                                      "--steps", "10,40", "--batch", "256", "--reference-steps", "400", "-f", "json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    import json

    runs = {run["steps"]: run for run in json.loads(result.stdout)["runs"]}
    strong = {steps: run["strong_error"] for steps, run in runs.items()}
    assert strong[40] < 0.5 * strong[10]


def test_sample_with_brownian_noise_converges_across_step_counts(tmp_path):
    finals = {}
    for noise in ("gaussian", "brownian"):
        for steps in (20, 160):
            path = tmp_path / f"{noise}-{steps}.npy"
            result = CliRunner().invoke(app, ["sample", "--algo", "sde-dpmsolver++", "--noise", noise, "--steps", str(steps),
                                              "--batch", "256", "--save", str(path), "--quiet"])
            assert result.exit_code == 0, result.stderr
            finals[noise, steps] = np.load(path)
    gap = {noise: np.median(np.linalg.norm(finals[noise, 20] - finals[noise, 160], axis=1)) for noise in ("gaussian", "brownian")}
    assert gap["brownian"] < 0.25 < 1.0 < gap["gaussian"]  # one path: the coarse run approximates the fine one


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algo", "sde-dpmsolver++", "--eta", "-1"], "--eta: -1.0 is not allowed; it must be a number >= 0"),
        (["--algo", "sde-dpmsolver++", "--s-noise", "0"], "--s-noise: 0.0 is not allowed; it must be a positive number"),
        (["--eta", "0.5"], "--eta: applies to the SDE algorithms"),
        (["--s-noise", "0.9"], "--s-noise: applies to the SDE algorithms"),
        (["--algo", "sde-dpmsolver++", "--eta", "0.5", "--compat", "diffusers"], "--eta: diffusers' SDE schedulers inject the full noise"),
    ],
)
def test_bad_eta_and_s_noise_are_one_line(args, message, tmp_path):
    saved = tmp_path / "x.npy"
    result = CliRunner().invoke(app, ["sample", *args, "--steps", "5", "--save", str(saved)])
    assert result.exit_code == 2 and result.stderr.startswith(f"dpmcli: error: {message}")
    assert result.stderr.count("\n") == 1 and not saved.exists()


def test_the_drop_in_scheduler_takes_eta_and_s_noise():
    pytest.importorskip("diffusers")
    from dpmcli.diffusers import DPMSolverScheduler

    scheduler = DPMSolverScheduler(algorithm_type="sde-dpmsolver++", eta=0.5, s_noise=0.8)
    scheduler.set_timesteps(10)
    expected = build_plan(scheduler.solver_config.with_options(steps=10))
    assert scheduler.solver_config.sde_eta == 0.5 and scheduler.plan.rows == expected.rows


def test_api_and_drop_in_read_the_same_brownian_path_as_the_loop():
    """`noise="brownian"` in DPMSolver and DPMSolverScheduler: the samples of dpmcli's loop on the seed's path."""
    from dpmcli import DPMSolver

    solver = DPMSolver(algo="sde-dpmsolver++", eta=0.7, steps=8, seed=3, noise="brownian")
    model = MixtureModel(ring()).bind(solver.plan)
    x_T = torch.randn((32, 2), generator=torch.Generator().manual_seed(5))
    expected = sample(solver.plan, model, x_T.clone(), BrownianNoise(3, solver.plan, (32, 2))).samples
    x = x_T.clone()
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    pytest.importorskip("diffusers")
    from dpmcli.diffusers import DPMSolverScheduler

    scheduler = DPMSolverScheduler(algorithm_type="sde-dpmsolver++", eta=0.7, seed=3, noise="brownian")
    scheduler.set_timesteps(8)
    model = MixtureModel(ring()).bind(scheduler.plan)  # diffusers' default betas, not dpmcli's
    expected = sample(scheduler.plan, model, x_T.clone(), BrownianNoise(3, scheduler.plan, (32, 2))).samples
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=torch.Generator().manual_seed(9)).prev_sample  # the path wins
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="noise: 'pink' is not allowed; choose one of: gaussian, brownian"):
        DPMSolver(algo="sde-dpmsolver++", noise="pink")


def test_compare_sweeps_eta_on_the_sde_runs_only():
    import json

    result = CliRunner().invoke(app, ["compare", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1", "--eta", "0,0.5",
                                      "--steps", "10", "--batch", "128", "--reference-steps", "100", "-f", "json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    runs = {(run["algo"], run.get("eta")): run for run in doc["runs"]}
    assert set(runs) == {("dpmsolver++", None), ("sde-dpmsolver++", 0.5)}  # the ODE run names no eta
    assert runs["sde-dpmsolver++", 0.5]["solver"] == "sde-dpmsolver++ order 1 eta 0.5"
    # eta 0 is the ODE step: the same update, run once and listed as skipped
    assert any(s.get("eta") == 0.0 and s["reason"].startswith("identical to dpmsolver++") for s in doc["skipped"])
    assert doc["config"]["sweep"]["eta"] == [0.0, 0.5]
    plain = json.loads(CliRunner().invoke(app, ["compare", "--algo", "sde-dpmsolver++", "--order", "1", "--steps", "10", "--batch", "128",
                                                "--reference-steps", "100", "-f", "json", "--quiet"]).stdout)
    assert "eta" not in plain["runs"][0] and "eta" not in plain["config"]["sweep"]  # a sweep without --eta reads as before
    bad = CliRunner().invoke(app, ["compare", "--algo", "sde-dpmsolver++", "--eta", "0.5,-1", "--steps", "5"])
    assert bad.exit_code == 2 and bad.stderr == "dpmcli: error: --eta: -1.0 is not allowed; give numbers >= 0\n"
