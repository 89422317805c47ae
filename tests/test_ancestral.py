"""The ancestral methods and DPM-Solver++ SDE against mathematics (docs/mathematics.md, "Ancestral steps").

* at eta = 0 they are the ODE methods they are built on: DPM-Solver++(1), singlestep DPM-Solver++(2);
* the first-order ancestral step at eta = 1 is the first-order SDE-DPM-Solver++ step, row for row;
* every one-evaluation ancestral step keeps a point mass's marginal N(alpha_t x0, sigma_t^2), on vp, flow
  and edm, at any eta (also past the point where the ODE part reaches sigma 0);
* NFE is what is spent: 2 calls per 2S step, 1 where the ODE part reaches sigma 0 or the last step;
* DPM-Solver++ SDE's two draws per step are increments of one Brownian path over nested intervals;
* ancestral runs at eta e converge strongly to the SDE at eta e^2 on the same path (compare's reference);
* every stochastic method samples on every process; bad input is one line, exit 2.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dpmcli import SolverConfig, build_plan
from dpmcli.brownian import BrownianNoise
from dpmcli.cli.main import app
from dpmcli.models import MixtureModel, ring
from dpmcli.sampler import sample

runner = CliRunner()
ANCESTRAL_2S = dict(method="ancestral", order=2)
DPMPP_SDE = dict(method="singlestep", algo="sde-dpmsolver++", order=2)
PROCESSES = {"vp": {}, "flow": dict(flow_shift=3.0), "edm": dict(spacing="karras")}


def run(options: dict, steps=8, batch=64, **extra):
    plan = build_plan(SolverConfig(steps=steps, **options, **extra))
    x_T = torch.randn((batch, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * plan.schedule.init_noise_sigma
    calls = []
    model = MixtureModel(ring()).bind(plan)

    def counted(x, t):
        calls.append(t)
        return model(x, t)

    noise = lambda index, like, scale: torch.randn(like.shape, generator=torch.Generator().manual_seed(index), dtype=like.dtype) * scale
    return sample(plan, counted, x_T, noise=noise).samples, plan, len(calls)


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize("stochastic, ode", [
    (dict(method="ancestral", order=1), dict(algo="dpmsolver++", order=1)),
    (ANCESTRAL_2S, dict(method="singlestep", algo="dpmsolver++", order=2)),
    (DPMPP_SDE, dict(method="singlestep", algo="dpmsolver++", order=2)),
])
def test_at_eta_zero_they_are_their_ode_methods(stochastic, ode, process):
    ours, plan, _ = run(stochastic, eta=0.0, process=process, **PROCESSES[process])
    theirs, _, _ = run(ode, process=process, **PROCESSES[process])
    assert all(row.c == 0.0 for row in plan.rows)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-12)


def test_first_order_ancestral_at_eta_one_is_the_first_order_sde_step():
    ancestral = build_plan(SolverConfig(method="ancestral", order=1, steps=12, spacing="karras")).rows
    sde = build_plan(SolverConfig(algo="sde-dpmsolver++", order=1, steps=12, spacing="karras")).rows
    for mine, theirs in zip(ancestral, sde):
        assert mine.noise_index == theirs.noise_index
        np.testing.assert_allclose([mine.a, *mine.b, mine.c], [theirs.a, *theirs.b, theirs.c], rtol=1e-12, atol=1e-15)
    ancestral_half = build_plan(SolverConfig(method="ancestral", order=1, steps=12, eta=0.5)).rows
    assert ancestral_half[3].c != build_plan(SolverConfig(algo="sde-dpmsolver++", order=1, steps=12, eta=0.5)).rows[3].c


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize("eta", [0.3, 1.0, 2.5])
def test_one_evaluation_ancestral_steps_keep_a_point_mass_marginal(process, eta):
    plan = build_plan(SolverConfig(method="ancestral", order=1, steps=9, eta=eta, final_sigma="sigma-min", process=process,
                                   **PROCESSES[process]))
    for row in plan.rows:
        alpha_s, sigma_s = plan.alpha_t[row.step], plan.sigma_t[row.step]
        alpha_t, sigma_t = plan.alpha_t[row.step + 1], plan.sigma_t[row.step + 1]
        # x_t = a x_s + b x0 + c z with x_s ~ N(alpha_s x0, sigma_s^2): mean alpha_t x0, variance sigma_t^2
        assert row.a * alpha_s + row.b[0] == pytest.approx(alpha_t, rel=1e-12)
        assert (row.a * sigma_s) ** 2 + row.c**2 == pytest.approx(sigma_t**2, rel=1e-12)


def test_nfe_is_what_the_run_spends():
    _, plan, calls = run(ANCESTRAL_2S, steps=10)
    assert plan.nfe == calls == 19  # two per step, one onto sigma 0
    _, plan, calls = run(ANCESTRAL_2S, steps=10, eta=3.0)
    assert plan.nfe == calls == 10  # at eta 3 every ODE part reaches sigma 0: Euler steps of one call
    _, plan, calls = run(DPMPP_SDE, steps=10, final_sigma="sigma-min")
    assert plan.nfe == calls == 20 and plan.noise_draws == 20
    _, plan, calls = run(DPMPP_SDE, steps=10, eta=3.0)
    assert plan.nfe == calls == 19  # DPM-Solver++ SDE calls the midpoint even where its ODE part reaches sigma 0


def test_dpmpp_sde_draws_increments_of_one_path_over_nested_intervals():
    plan = build_plan(SolverConfig(steps=6, **DPMPP_SDE))
    source = BrownianNoise(0, plan, (4, 2))
    rows = {row.noise_index: row for row in plan.rows if row.noise_index >= 0}
    tau = lambda sigma: float(np.exp(2.0 * plan.schedule.coefficients(np.array([sigma]))[2][0]))
    for k in range(plan.steps - 1):
        inner, whole = rows[2 * k], rows[2 * k + 1]
        assert inner.noise_sigmas[0] == pytest.approx(whole.noise_sigmas[0], rel=1e-15)
        widths = [tau(row.noise_sigmas[1]) - tau(row.noise_sigmas[0]) for row in (inner, whole)]
        w_inner = source(2 * k, torch.zeros(4, 2, dtype=torch.float64)) * math.sqrt(widths[0])
        w_whole = source(2 * k + 1, torch.zeros(4, 2, dtype=torch.float64)) * math.sqrt(widths[1])
        rest = source.tree.increment(tau(inner.noise_sigmas[1]), tau(whole.noise_sigmas[1]))
        torch.testing.assert_close(w_whole - w_inner, rest, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eta", [0.5, 0.7, 1.6])
def test_an_ancestral_step_at_eta_is_the_sde_step_at_eta_squared_to_first_order(eta):
    # on a grid of n steps (h ~ 1/n), a, b and c^2 agree with the SDE at eta^2 to O(h^2), with the SDE at eta only to O(h)
    def gaps(steps, sde_eta):
        ancestral = build_plan(SolverConfig(method="ancestral", order=1, eta=eta, steps=steps, spacing="logsnr",
                                            final_sigma="sigma-min")).rows
        sde = build_plan(SolverConfig(algo="sde-dpmsolver++", order=1, eta=sde_eta, steps=steps, spacing="logsnr",
                                      final_sigma="sigma-min")).rows
        return max(max(abs(p.a - q.a), abs(p.b[0] - q.b[0]), abs(p.c**2 - q.c**2)) for p, q in zip(ancestral, sde))

    squared = [gaps(n, eta**2) for n in (100, 400)]
    plain = [gaps(n, eta) for n in (100, 400)]
    assert squared[0] / squared[1] > 12  # second order in h: 16 for 4x the steps
    assert 3 < plain[0] / plain[1] < 5  # first order: 4
    assert squared[1] < 0.1 * plain[1]


def test_ancestral_runs_converge_strongly_to_the_sde_at_eta_squared():
    result = runner.invoke(app, ["compare", "--model", "ring", "--method", "ancestral", "--order", "1", "--eta", "0.7",
                                 "--steps", "10,40", "--batch", "256", "--reference-steps", "400", "-f", "json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    strong = {run["steps"]: run["strong_error"] for run in json.loads(result.stdout)["runs"]}
    assert strong[40] < 0.5 * strong[10]


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize("options", [
    ["--method", "ancestral", "--order", "1"], ["--method", "ancestral", "--order", "2"],
    ["--method", "singlestep", "--algo", "sde-dpmsolver++", "--order", "2"],
    ["--algo", "sde-dpmsolver++", "--order", "3", "--compat", "k-diffusion", "--noise", "k-diffusion"],
])
def test_every_stochastic_method_samples_on_every_process(process, options):
    grid = ["--spacing", "karras"] if process == "edm" else []
    result = runner.invoke(app, ["sample", "--model", "ring", "--process", process, *grid, "--steps", "8", "--batch", "32",
                                 "--eta", "0.8", *options, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert math.isfinite(report["final"]["std"]) and report["final"]["std"] > 0.3


@pytest.mark.parametrize("options, fragment", [
    (["--method", "ancestral", "--order", "3"], "--order: 3 is not allowed with --method ancestral"),
    (["--method", "ancestral", "--algo", "dpmsolver"], "--method ancestral: 'dpmsolver'"),
    (["--method", "ancestral", "--eta", "-0.5"], "--eta: -0.5"),
    (["--method", "ancestral", "--s-noise", "0"], "--s-noise: 0.0"),
    (["--method", "singlestep", "--algo", "sde-dpmsolver++", "--order", "1"], "--order: 1 is not allowed"),
    (["--compat", "k-diffusion", "--algo", "dpmsolver++", "--order", "3"], "--compat k-diffusion: k-diffusion has no"),
    (["--compat", "k-diffusion", "--algo", "sde-dpmsolver++", "--coefficients", "exact"], "--compat k-diffusion"),
    (["--compat", "k-diffusion", "--method", "ancestral", "--thresholding"], "--compat k-diffusion"),
    (["--compat", "diffusers", "--method", "ancestral"], "--compat diffusers"),
])
def test_bad_stochastic_options_are_one_line(options, fragment):
    result = runner.invoke(app, ["sample", "--model", "ring", "--steps", "6", *options])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpmcli: error: ") and fragment in lines[0], lines
    assert result.stdout == ""


def test_a_noise_file_must_have_two_draws_per_step_for_dpmpp_sde(tmp_path):
    path = tmp_path / "z.npy"
    np.save(path, np.zeros((6, 4, 2)))
    result = runner.invoke(app, ["sample", "--model", "ring", "--steps", "6", "--batch", "4", "--method", "singlestep",
                                 "--algo", "sde-dpmsolver++", "--noise", str(path)])
    assert result.exit_code == 2 and "(12, 4, 2)" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    np.save(path, np.zeros((12, 4, 2)))
    ok = runner.invoke(app, ["sample", "--model", "ring", "--steps", "6", "--batch", "4", "--method", "singlestep",
                             "--algo", "sde-dpmsolver++", "--noise", str(path), "-f", "json"])
    assert ok.exit_code == 0, ok.stderr


@pytest.mark.parametrize("spacing", [{}, {"use_karras_sigmas": True}])
def test_dpmpp_sde_is_diffusers_dpm_solver_sde_scheduler(spacing):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverSDEScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **spacing)
    scheduler.set_timesteps(8)
    sigmas = np.unique(scheduler.sigmas.double().numpy())[::-1]  # diffusers lists each inner sigma twice, for its two stages
    sigmas[0] = min(sigmas[0], build_plan(SolverConfig(steps=1)).sigmas[0])  # its float32 sigma_max rounds up past the table
    plan = build_plan(SolverConfig(sigmas=tuple(float(s) for s in sigmas), **DPMPP_SDE))
    mixture = ring()
    x_ve = torch.randn((16, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64) * float(sigmas[0])
    zs = torch.randn((plan.noise_draws, 16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = []

    def noise_sampler(sigma, sigma_next):  # replaces diffusers' Brownian tree: the same z, call by call
        calls.append((float(sigma), float(sigma_next)))
        return zs[len(calls) - 1]

    scheduler.noise_sampler = noise_sampler
    x = x_ve.clone()
    for t in scheduler.timesteps:
        sigma = float(scheduler.sigmas[scheduler.step_index or 0] if scheduler.state_in_first_order else scheduler.mid_point_sigma)
        alpha = 1.0 / math.sqrt(1.0 + sigma**2)
        eps = mixture.denoise(scheduler.scale_model_input(x, t), alpha, sigma * alpha)[1]
        x = scheduler.step(eps, t, x).prev_sample
    ours = sample(plan, MixtureModel(mixture).bind(plan), x_ve * plan.alpha_t[0], noise=lambda i, like, scale: zs[i] * scale).samples
    assert len(calls) == plan.noise_draws - 2 and plan.nfe == len(scheduler.timesteps)
    # diffusers computes its sigmas and t = -log sigma in float32: agreement to float32 round-off
    np.testing.assert_allclose(ours.numpy(), x.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, noise, tolerance", [
    (ANCESTRAL_2S, "brownian", 1e-12),
    (dict(algo="sde-dpmsolver++", order=3, compat="k-diffusion"), "k-diffusion", 1e-12),
    # the stage timesteps of DPM-Solver++ SDE are fractional: the drop-in hands them over in float32
    (DPMPP_SDE, "brownian", 1e-6),
])
def test_the_drop_in_scheduler_and_the_api_run_them_as_sample_does(options, noise, tolerance):
    from dpmcli import DPMSolver
    from dpmcli.brownian import noise_source
    from dpmcli.diffusers import DPMSolverScheduler

    scheduler = DPMSolverScheduler(noise=noise, seed=3, **options)
    scheduler.set_timesteps(10)
    plan = scheduler.plan
    model = MixtureModel(ring()).bind(plan)
    x_T = torch.randn((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = sample(plan, model, x_T.clone(), noise=noise_source(noise, 3, plan)).samples
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    np.testing.assert_allclose(x.numpy(), expected.numpy(), rtol=tolerance, atol=tolerance)
    solver = DPMSolver(seed=3, noise=noise, steps=10, **options)  # dpmcli's defaults: Stable Diffusion's betas
    model = MixtureModel(ring()).bind(solver.plan)
    expected = sample(solver.plan, model, x_T.clone(), noise=noise_source(noise, 3, solver.plan)).samples
    y = x_T.clone()
    for t in solver.timesteps:
        y = solver.step(model(solver.scale_model_input(y, t), t), t, y)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=tolerance, atol=tolerance)


def test_k_diffusion_noise_of_a_sample_does_not_depend_on_the_batch():
    from dpmcli.brownian import noise_source

    plan = build_plan(SolverConfig(steps=6, spacing="karras", **DPMPP_SDE))
    small, large = noise_source("k-diffusion", 5, plan), noise_source("k-diffusion", 5, plan)
    for index in sorted(plan.noise_spans):
        few = small(index, torch.zeros(4, 2, dtype=torch.float64))
        many = large(index, torch.zeros(16, 2, dtype=torch.float64))
        torch.testing.assert_close(few, many[:4], rtol=0, atol=0)
        assert float(many[4:].std()) > 0.3


@pytest.mark.parametrize("options", [dict(method="ancestral", order=1), ANCESTRAL_2S])
def test_the_drop_in_starting_mid_grid_runs_the_tail_ancestrally(options):
    from dpmcli.brownian import noise_source
    from dpmcli.diffusers import DPMSolverScheduler

    scheduler = DPMSolverScheduler(noise="brownian", seed=4, **options)
    scheduler.set_timesteps(8)
    begin = next(r for r, e in enumerate(scheduler.plan.evaluations) if e.step == 3 and e.stage == 0)
    scheduler.set_begin_index(begin)
    x_start = torch.randn((8, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tail = build_plan(scheduler.plan.config.with_options(sigmas=tuple(float(v) for v in scheduler.plan.sigmas[3:])))
    assert any(row.c > 0 for row in tail.rows[:-1])
    model = MixtureModel(ring()).bind(tail)
    expected = sample(tail, model, x_start.clone(), noise=noise_source("brownian", 4, tail)).samples
    x = x_start.clone()
    for t in scheduler.timesteps[begin:]:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    np.testing.assert_allclose(x.numpy(), expected.numpy(), rtol=1e-9, atol=1e-9)
