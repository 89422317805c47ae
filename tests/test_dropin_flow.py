"""DPMSolverScheduler on flow configs (use_flow_sigmas): diffusers' DPMSolverMultistepScheduler side by side.

* compat="diffusers" follows DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=S) step
  for step: the same timesteps and float32 sigmas, and every update within 1e-5 relative to
  max(1, |x|) (the bound of test_dropin_scheduler.py: both compute diffusers' float32 weights,
  dpmcli folds them into one float64 combination). Shifts 1 and 3, mu = 0.5 with
  use_dynamic_shifting, orders 1-3, dpmsolver++ and sde-dpmsolver++ (the SDE with one
  torch.Generator seed for both, so each draws the same noise); free-running within 1e-5 (ODE)
  or 1e-3 (SDE).
* without compat, it steps exactly as dpmcli's own loop on the same flow plan.
* the flow words round-trip through the config, and ``set_timesteps(n, device, mu)`` takes
  diffusers' positional order.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from dpmcli import ConfigError, SolverConfig, build_plan
from dpmcli.diffusers import DPMSolverScheduler
from dpmcli.models import MixtureModel, ring
from dpmcli.noise import ArrayNoise, GaussianNoise, initial_latents
from dpmcli.sampler import sample

STEPS = 10
STEP_TOLERANCE = 1e-5  # relative to max(1, |x|), per step and for whole ODE runs
SDE_RUN_TOLERANCE = 1e-3  # whole SDE runs: the noise amplifies float32 round-off, as in test_dropin_scheduler.py


def flow_config(shift=1.0, mu=None, **extra):
    """diffusers' words for a flow model's scheduler: a static shift, or use_dynamic_shifting for mu."""
    config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": shift, **extra}
    if mu is not None:
        config["use_dynamic_shifting"] = True
    return config


def relative_gap(a, b):
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def x_T(shape=(64, 2)):
    return initial_latents(0, shape, "cpu", torch.float32)


class RandomLinear:
    """A stand-in network: a fixed random linear map of x plus a term in t, the same for both schedulers."""

    def __init__(self, dims=2, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.weight = 0.5 * torch.randn(dims, dims, generator=generator)
        self.bias = torch.randn(dims, generator=generator)

    def __call__(self, x, t):
        return x @ self.weight + self.bias * (float(t) / 1000.0)


def compat_pair(shift, mu, steps=STEPS, **extra):
    theirs = DPMSolverMultistepScheduler(**flow_config(shift, mu, **extra))
    ours = DPMSolverScheduler.from_config(theirs.config, compat="diffusers")
    theirs.set_timesteps(steps, mu=mu)
    ours.set_timesteps(steps, mu=mu)
    return theirs, ours


# (algorithm, order, shift, mu, prediction, extra config); mu comes with use_dynamic_shifting
COMPAT_CASES = [
    ("dpmsolver++", 1, 1.0, None, "flow_prediction", {}),
    ("dpmsolver++", 2, 3.0, None, "flow_prediction", {}),
    ("dpmsolver++", 2, 1.0, None, "sample", {"solver_type": "heun"}),
    ("dpmsolver++", 3, 3.0, None, "epsilon", {}),
    ("dpmsolver++", 3, 1.0, 0.5, "flow_prediction", {"lower_order_final": False}),
    ("sde-dpmsolver++", 1, 3.0, None, "flow_prediction", {}),
    ("sde-dpmsolver++", 2, 1.0, 0.5, "sample", {}),
    ("sde-dpmsolver++", 3, 3.0, None, "flow_prediction", {}),
    ("sde-dpmsolver++", 3, 3.0, 0.5, "flow_prediction", {"solver_type": "heun"}),  # mu wins over flow_shift
]
MODELS = {"mixture": lambda schedule, prediction: MixtureModel(ring(), schedule, prediction), "linear": lambda *_: RandomLinear()}


@pytest.mark.parametrize("model_kind", sorted(MODELS))
@pytest.mark.parametrize("algo, order, shift, mu, prediction, extra", COMPAT_CASES)
def test_compat_flow_matches_dpmsolver_multistep(algo, order, shift, mu, prediction, extra, model_kind):
    config = {"algorithm_type": algo, "solver_order": order, "prediction_type": prediction, **extra}
    theirs, ours = compat_pair(shift, mu, **config)
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.timesteps.dtype == torch.int64
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    assert ours.solver_config.shift == pytest.approx(math.exp(mu) if mu is not None else shift, rel=1e-15)
    model = MODELS[model_kind](ours.plan.schedule, prediction)
    start = x_T()
    # step for step from diffusers' latent, the SDE noise drawn from generators seeded alike
    theirs_noise, ours_noise = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    x, worst = start, 0.0
    for t in theirs.timesteps:
        out = model(x, t)
        expected = theirs.step(out, t, x, generator=theirs_noise).prev_sample
        got = ours.step(out, t, x, generator=ours_noise).prev_sample
        worst = max(worst, relative_gap(got, expected))
        x = expected
    assert worst <= STEP_TOLERANCE
    # free-running, with injected noise
    theirs.set_timesteps(STEPS, mu=mu)
    ours.set_timesteps(STEPS, mu=mu)
    noises = torch.randn((STEPS, *start.shape), generator=torch.Generator().manual_seed(2))
    a, b = start, start
    for i, t in enumerate(theirs.timesteps):
        a = theirs.step(model(a, t), t, a, variance_noise=noises[i]).prev_sample
        b = ours.step(model(b, t), t, b, variance_noise=noises[i]).prev_sample
    assert relative_gap(b, a) <= (SDE_RUN_TOLERANCE if algo.startswith("sde") else STEP_TOLERANCE)


def test_compat_flow_add_noise_and_a_run_from_the_middle():
    """img2img on a flow grid: x = (1 - s) x0 + s noise at timesteps[begin], then the rest of the grid."""
    begin = 4
    theirs, ours = compat_pair(3.0, None, algorithm_type="dpmsolver++", solver_order=3)
    clean, noise = ring().sample(64, torch.Generator().manual_seed(3)).float(), x_T()
    timesteps = ours.timesteps[begin:]
    theirs.set_begin_index(begin)
    ours.set_begin_index(begin)
    latents = ours.add_noise(clean, noise, timesteps[:1])
    s = float(ours.sigmas[begin])
    torch.testing.assert_close(latents, (1 - s) * clean + s * noise)
    assert relative_gap(latents, theirs.add_noise(clean, noise, timesteps[:1])) <= 1e-6
    model = MixtureModel(ring(), ours.plan.schedule, "flow_prediction")
    a = b = latents
    for t in timesteps:
        a = theirs.step(model(a, t), t, a).prev_sample
        b = ours.step(model(b, t), t, b).prev_sample
    assert relative_gap(b, a) <= STEP_TOLERANCE


# ---------------------------------------------------------------- dpmcli's own flow plan


@pytest.mark.parametrize(
    "algo, order, shift, mu, coefficients",
    [
        ("dpmsolver++", 3, 1.0, None, "published"),
        ("dpmsolver++", 2, 3.0, None, "exact"),
        ("sde-dpmsolver++", 2, 3.0, None, "published"),
        ("dpmsolver", 3, 1.0, 0.5, "exact"),
        ("sde-dpmsolver++", 3, 1.0, 0.5, "published"),
    ],
)
def test_own_flow_mode_steps_like_dpmcli(algo, order, shift, mu, coefficients):
    """Without compat the scheduler is dpmcli's flow plan (float64, timestep T s), stepped as dpmcli's loop steps it."""
    theirs = DPMSolverMultistepScheduler(**flow_config(shift, mu, solver_order=order))
    # dpmcli's algo wins over algorithm_type (diffusers refuses dpmsolver with a final sigma of zero)
    ours = DPMSolverScheduler.from_config(theirs.config, algo=algo, coefficients=coefficients, seed=7)
    ours.set_timesteps(STEPS, "cpu", mu)
    plan = ours.plan
    shifted = {"flow_mu": mu} if mu is not None else {"flow_shift": shift}
    same = SolverConfig(process="flow", prediction_type="flow_prediction", algo=algo, order=order, coefficients=coefficients, steps=STEPS, **shifted)
    assert plan.rows == build_plan(same).rows
    model = MixtureModel(ring(), plan.schedule, "flow_prediction")
    start = x_T()
    values = plan.timestep_values
    x = start
    for i, t in enumerate(ours.timesteps):
        x = ours.step(model(x, values[i]), t, x).prev_sample
    assert torch.equal(x, sample(plan, model, start, noise=GaussianNoise(7)).samples)
    if algo.startswith("sde"):
        noises = torch.randn((plan.nfe, *start.shape), generator=torch.Generator().manual_seed(1))
        ours.set_timesteps(STEPS, "cpu", mu)
        x = start
        for i, t in enumerate(ours.timesteps):
            x = ours.step(model(x, values[i]), t, x, variance_noise=noises[i]).prev_sample
        assert torch.equal(x, sample(plan, model, start, noise=ArrayNoise(noises.numpy())).samples)
    if algo == "dpmsolver++" and coefficients == "published":
        # the same grid as diffusers' in float64, the model told T s instead of its truncation
        theirs.set_timesteps(STEPS, mu=mu)
        np.testing.assert_allclose(plan.sigmas, theirs.sigmas.double().numpy(), rtol=1e-6, atol=0)
        x = start
        for t in theirs.timesteps:
            x = theirs.step(model(x, t), t, x).prev_sample
        assert relative_gap(sample(plan, model, start).samples, x) <= 1e-2


def test_training_tables_before_set_timesteps():
    """A flow schedule has no betas: the tables are the VP ones of the same SNR, and sigmas the flow's s = t / T."""
    ours = DPMSolverScheduler(**flow_config(3.0))
    t = np.arange(1000)
    np.testing.assert_allclose(ours.sigmas.numpy(), t / 1000, rtol=1e-6, atol=1e-7)
    s = t / 1000
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), (1 - s) ** 2 / ((1 - s) ** 2 + s**2), rtol=1e-5)
    torch.testing.assert_close(torch.cumprod(1 - ours.betas, 0), ours.alphas_cumprod, rtol=1e-4, atol=1e-7)
    assert ours.init_noise_sigma == 1.0 and len(ours) == 1000
    clean, noise = torch.randn(3, 2), torch.randn(3, 2)
    levels = torch.tensor([0.0, 0.25, 0.999]).unsqueeze(1)
    torch.testing.assert_close(ours.add_noise(clean, noise, torch.tensor([0, 250, 999])), (1 - levels) * clean + levels * noise)


# ---------------------------------------------------------------- configuration and set_timesteps


def test_flow_config_round_trips(tmp_path):
    theirs = DPMSolverMultistepScheduler(**flow_config(3.0, algorithm_type="sde-dpmsolver++", solver_order=3))
    ours = DPMSolverScheduler.from_config(theirs.config)
    words = ("use_flow_sigmas", "flow_shift", "use_dynamic_shifting", "time_shift_type", "prediction_type", "algorithm_type", "solver_order")
    assert {k: ours.config[k] for k in words} == {k: theirs.config[k] for k in words}
    cfg = ours.solver_config
    assert (cfg.process, cfg.shift, cfg.prediction_type, cfg.algo, cfg.order) == ("flow", 3.0, "flow_prediction", "sde-dpmsolver++", 3)
    # saved and loaded, and read back by diffusers' own scheduler
    ours.save_config(tmp_path)
    again = DPMSolverScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731 (diffusers' own bookkeeping aside)
    assert again.solver_config == cfg and public(again.config) == public(ours.config)
    back = DPMSolverMultistepScheduler.from_config(ours.config)
    assert {k: back.config[k] for k in words} == {k: theirs.config[k] for k in words}
    # a dpmcli grid on a flow schedule stays under dpmcli's name: diffusers' sigma flags stay off
    own = DPMSolverScheduler.from_config(theirs.config, spacing="logsnr", order=2)
    assert own.config.spacing == "logsnr" and not own.config.use_lu_lambdas and own.config.solver_order == 2
    assert DPMSolverScheduler.from_config(own.config).solver_config == own.solver_config
    dynamic = DPMSolverScheduler(**flow_config(2.0, mu=0.0))
    assert dynamic.config.use_dynamic_shifting and dynamic.config.time_shift_type == "exponential"
    assert public(DPMSolverScheduler.from_config(dynamic.config).config) == public(dynamic.config)


def test_set_timesteps_takes_diffusers_positional_order():
    theirs = DPMSolverMultistepScheduler(**flow_config(mu=0.7))
    ours = DPMSolverScheduler.from_config(theirs.config, compat="diffusers")
    theirs.set_timesteps(10, "cpu", 0.7)
    ours.set_timesteps(10, "cpu", 0.7)  # num_inference_steps, device, mu
    assert ours.solver_config.shift == pytest.approx(math.exp(0.7), rel=1e-15)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    by_name = DPMSolverScheduler.from_config(theirs.config, compat="diffusers")
    by_name.set_timesteps(num_inference_steps=10, mu=0.7)
    assert torch.equal(by_name.timesteps, ours.timesteps)
    # without mu the configured flow_shift shifts the grid, as in diffusers (which keeps an earlier mu: dpmcli does not)
    fresh = DPMSolverMultistepScheduler(**flow_config(2.0, mu=0.0))
    plain = DPMSolverScheduler.from_config(fresh.config, compat="diffusers")
    fresh.set_timesteps(10)
    plain.set_timesteps(10)
    assert torch.equal(plain.timesteps, fresh.timesteps) and plain.solver_config.shift == 2.0


def one_line_error(call, match):
    with pytest.raises(ConfigError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_flow_errors_are_one_line_and_name_the_option():
    static = DPMSolverScheduler(**flow_config(3.0))
    one_line_error(lambda: static.set_timesteps(10, "cpu", 0.5), "mu needs .*use_dynamic_shifting=True")
    one_line_error(lambda: DPMSolverScheduler().set_timesteps(10, mu=0.5), "mu needs a flow config")
    dynamic = DPMSolverScheduler(**flow_config(mu=0.0))
    one_line_error(lambda: dynamic.set_timesteps(10, mu=100.0), r"^DPMSolverScheduler.set_timesteps: mu: 100.0 is not allowed")
    one_line_error(lambda: dynamic.set_timesteps(timesteps=[900, 500, 100], mu=0.5), "not custom timesteps or sigmas")
    one_line_error(lambda: dynamic.set_timesteps(sigmas=[0.9, 0.5, 0.1], mu=0.5), "not custom timesteps or sigmas")
    one_line_error(lambda: DPMSolverScheduler(**flow_config(mu=0.0), time_shift_type="linear"), "time_shift_type 'linear'")
    one_line_error(lambda: DPMSolverScheduler(**flow_config(-1.0)), "flow_shift: -1.0")
    one_line_error(lambda: DPMSolverScheduler(**flow_config(), use_karras_sigmas=True), "use_flow_sigmas and use_karras_sigmas")
    # diffusers' flow mode ends a sigma_min grid at its VP beta table's sigma_min: compat refuses that
    message = one_line_error(
        lambda: DPMSolverScheduler(**flow_config(), final_sigmas_type="sigma_min", compat="diffusers"), "final_sigma"
    )
    assert "compat" in message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPMSolverScheduler(**flow_config(), final_sigmas_type="sigma_min").set_timesteps(STEPS)  # dpmcli's own grid: fine


def test_custom_flow_grids_without_compat():
    ours = DPMSolverScheduler(**flow_config(3.0))
    ours.set_timesteps(sigmas=[0.95, 0.7, 0.4, 0.1])  # the flow's own sigma column, s; the final 0 appended
    np.testing.assert_allclose(ours.plan.sigmas, [0.95, 0.7, 0.4, 0.1, 0.0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours.timesteps.numpy(), [950, 700, 400, 100], rtol=1e-6)
    ours.set_timesteps(timesteps=[900, 600, 300])
    np.testing.assert_allclose(ours.plan.sigmas, [0.9, 0.6, 0.3, 0.0], rtol=1e-12)
