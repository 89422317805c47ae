"""--final-decay P: the step onto sigma 0 with a noise prediction decaying as sigma^P. Its weights integrate
such a prediction exactly, P = 1 raises the last step from second to fourth order in sigma on smooth data,
tune searches it, a recipe carries it to every reader, and bad values are one line with exit 2."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_cli_edges import invoke, one_line_error

from dpmcli import SolverConfig, build_plan
from dpmcli.models import MixtureModel, ring
from dpmcli.models.mixture import GaussianMixture
from dpmcli.recipe import load_recipe, stock_config
from dpmcli.sampler import sample
from dpmcli.tune import FREE_FINAL_DECAY, FREE_FINAL_SIGMA, Grid, TuneSpec, final_policies, tune


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("process", ["vp", "flow"])  # edm's "epsilon" is diffusers' preconditioned F: the Gaussian test below
@pytest.mark.parametrize("decay", [0.0, 1.0, 2.5])
def test_weights_integrate_a_power_law_noise_prediction_exactly(algo, process, decay):
    """One step from sigma_s to 0 with a model whose noise prediction is g: x~_0 = x~_s - sigma_s g / (P + 1)."""
    top = {"vp": 2.0, "flow": 0.8}[process]  # the grid in the process's own sigma column
    plan = build_plan(SolverConfig(algo=algo, process=process, sigmas=(top, 0.0), final_decay=decay, prediction_type="epsilon"))
    alpha_s, sigma_s = float(plan.alpha_t[0]), float(plan.sigma_t[0])
    x_tilde = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    g = torch.tensor([[0.7, 0.4]], dtype=torch.float64)
    out = sample(plan, lambda x, t: g.expand_as(x), alpha_s * x_tilde).samples
    sigma = sigma_s / alpha_s  # the step's sigma in sigma space
    expected = x_tilde - sigma * g / (decay + 1.0)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12), (out, expected)


def test_decay_one_raises_the_last_step_to_fourth_order_on_a_gaussian():
    """From the exact latent x~(sigma) = mu + k sqrt(s^2 + sigma^2) of N(mu, s^2): the usual step misses the
    end point mu + k s by O(sigma^2), the P = 1 step by O(sigma^4) (docs/mathematics.md §14)."""
    mu, s = 0.25, 0.5
    gaussian = GaussianMixture("one", np.array([1.0]), np.array([[mu]]), np.array([[s]]))
    k = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64).reshape(-1, 1)
    sigmas = np.array([0.16, 0.08, 0.04])
    slopes = {}
    for decay in (0.0, 1.0):
        errors = []
        for sigma in sigmas:
            plan = build_plan(SolverConfig(process="edm", sigmas=(float(sigma), 0.0), final_decay=decay))
            x = mu + k * math.sqrt(s**2 + sigma**2)
            out = sample(plan, MixtureModel(gaussian).bind(plan), x.clone()).samples
            errors.append(float((out - (mu + k * s)).abs().max()))
        slopes[decay] = np.polyfit(np.log(sigmas), np.log(errors), 1)[0]
    assert slopes[0.0] == pytest.approx(2.0, abs=0.1) and slopes[1.0] == pytest.approx(4.0, abs=0.15), slopes


def test_tune_searches_the_decay_on_ode_runs_that_end_at_zero():
    ode = [free for _, free in final_policies(SolverConfig(steps=6))]
    assert FREE_FINAL_DECAY in ode and FREE_FINAL_SIGMA in ode
    assert FREE_FINAL_DECAY not in [free for _, free in final_policies(SolverConfig(steps=6, algo="sde-dpmsolver++"))]
    assert FREE_FINAL_DECAY not in [free for _, free in final_policies(SolverConfig(steps=6, final_sigma="sigma-min"))]
    plan = build_plan(SolverConfig(steps=6, spacing="logsnr"))
    grid = Grid(plan, free=FREE_FINAL_DECAY)
    theta = grid.theta_of(plan)
    config = grid.config(plan.config, theta)
    assert len(theta) == 7 and config.final_decay == pytest.approx(1.0, rel=1e-12)  # the search starts from smooth data
    assert config.sigmas == pytest.approx(tuple(plan.sigmas), rel=1e-9)
    theta[-1] = math.log(3.0)
    assert grid.config(plan.config, theta).final_decay == pytest.approx(3.0, rel=1e-12)
    theta[-1] = 1e6  # far out on the search's line: the last step keeps the latent, and stays finite
    assert build_plan(grid.config(plan.config, theta)).rows[-1].b[0] < 1e-12


@pytest.fixture
def decayed_recipe(tmp_path):
    """A ring recipe at NFE 5 on its stock grid (which ends at sigma 0) with P = 0.8."""
    tuned = tune(TuneSpec(nfe=5, model="ring", batch=64, train_batch=32, evaluations=10)).recipe
    plan = build_plan(stock_config(tuned))
    config = plan.config.with_options(sigmas=tuple(float(v) for v in plan.sigmas), final_decay=0.8)
    recipe = replace(tuned, config=config, timesteps=tuple(float(t) for t in plan.timesteps), target_sigma=0.0)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe.to_dict()))
    return path


def test_a_recipe_carries_the_decay_to_sample_and_the_dropin(decayed_recipe, tmp_path):
    recipe = load_recipe(decayed_recipe)
    assert recipe.config.final_decay == 0.8
    out = tmp_path / "samples.npy"
    result = invoke("sample", "--recipe", decayed_recipe, "--batch", 32, "--save", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["final_decay"] == 0.8
    plan = build_plan(recipe.config)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * float(plan.sigmas[0])
    ours = sample(plan, MixtureModel(ring()).bind(plan), x.clone()).samples
    usual = sample(build_plan(recipe.config.with_options(final_decay=0.0)), MixtureModel(ring()).bind(plan), x.clone()).samples
    assert (ours - usual).abs().max() > 1e-4  # the decay moves the samples
    pytest.importorskip("diffusers")
    from dpmcli.diffusers import DPMSolverScheduler

    scheduler = DPMSolverScheduler.from_recipe(decayed_recipe)
    scheduler.set_timesteps()
    model = MixtureModel(ring()).bind(scheduler.plan)
    a = x.clone()
    for t in scheduler.timesteps:
        a = scheduler.step(model(a, t), t, a).prev_sample
    assert (a - ours).abs().max() < 1e-6


def test_typed_decay_contradicting_a_recipe_is_one_line(decayed_recipe):
    one_line_error(invoke("sample", "--recipe", decayed_recipe, "--final-decay", 1), 2, "--final-decay: 1.0 contradicts --recipe")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--final-decay", "-1"], "--final-decay: -1.0 is not allowed; give a number P >= 0"),
        (["--final-decay", "nan"], "--final-decay: nan is not allowed"),
        (["--final-decay", "inf"], "--final-decay: inf is not allowed"),
        (["--final-decay", "x"], "--final-decay: 'x': it must be a number"),
        (["--final-decay", "1", "--final-sigma", "sigma-min"], "this run ends at --final-sigma sigma-min"),
        (["--final-decay", "1", "--algo", "sde-dpmsolver++"], "models the probability-flow ODE's last interval"),
        (["--final-decay", "1", "--method", "ancestral"], "models the probability-flow ODE's last interval"),
        (["--final-decay", "1", "--method", "adaptive"], "--method adaptive chooses its steps at run time"),
        (["--final-decay", "1", "--compat", "diffusers"], "diffusers has no such last step"),
    ],
)
def test_bad_decays_are_one_line(args, fragment):
    one_line_error(invoke("sample", *args), 2, fragment)
