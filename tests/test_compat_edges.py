"""Configurations at the edges of diffusers' DPMSolverMultistepScheduler, and schedule errors.

* compat="diffusers" accepts what diffusers accepts and computes what it computes, side by side
  with diffusers' own scheduler: zero-terminal-SNR rescaling of its default linear betas,
  thresholding below 1 and at ratio 0, custom timesteps, a trained beta table shorter than
  num_train_timesteps, grids that repeat a timestep. Where diffusers' weights divide by a
  zero-length step and return NaN, set_timesteps still succeeds and stepping that row raises a
  one-line NumericalError instead.
* dpmcli's own float64 mode keeps its schedule strictly decreasing (the zero-SNR floor).
* Schedule-construction errors name the option that causes them, with what is allowed, exit 2.
"""

import inspect
import json
import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from typer.testing import CliRunner

from dpmcli import DPMSolver
from dpmcli.cli.main import app
from dpmcli.config import SolverConfig
from dpmcli.diffusers import DPMSolverScheduler
from dpmcli.errors import ConfigError, NumericalError
from dpmcli.plan import build_plan
from dpmcli.schedule import Schedule
from dpmcli.grid import karras_ramp

# diffusers' own defaults (its test class uses these, with final_sigmas_type="sigma_min")
DIFFUSERS_DEFAULTS = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "final_sigmas_type": "sigma_min"}
SHAPE = (2, 3, 4, 4)


def model(x, t):
    """A smooth stand-in for a network: deterministic in (x, t)."""
    t = float(t)
    return 0.4 * x * (t / (t + 1.0)) + 0.05 * torch.cos(x + t / 500.0)


def x_start(dtype=torch.float32):
    return torch.linspace(-1.5, 1.5, math.prod(SHAPE), dtype=dtype).reshape(SHAPE)


def pair(**config):
    config = {**DIFFUSERS_DEFAULTS, **config}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPMSolverMultistepScheduler(**config), DPMSolverScheduler(**config, compat="diffusers")


def run(scheduler, x, steps=None):
    """Every step of the grid set on ``scheduler``; returns the samples after each step."""
    out = []
    for t in scheduler.timesteps[:steps]:
        x = scheduler.step(model(x, t), t, x).prev_sample
        out.append(x)
    return out


def assert_runs_agree(theirs, ours, steps=None, tol=1e-5):
    assert torch.equal(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    x = x_start()
    for k, (a, b) in enumerate(zip(run(theirs, x, steps), run(ours, x, steps))):
        assert torch.all(torch.isfinite(a)), k
        err = float((a - b).abs().max() / max(1.0, float(a.abs().max())))
        assert err < tol, (k, err)
    return a


# ---------------------------------------------------------------- zero terminal SNR


def test_rescale_zero_snr_compat_is_diffusers_table_and_run():
    theirs, ours = pair(rescale_betas_zero_snr=True)
    np.testing.assert_array_equal(ours.alphas_cumprod.numpy(), theirs.alphas_cumprod.numpy())
    abar = theirs.alphas_cumprod.numpy()
    assert abar[-2] < abar[-1]  # diffusers' 2**-24 floor rises above alpha_bar[998]: kept as it is
    with pytest.warns(UserWarning, match="rescale-zero-snr"):
        ours.set_timesteps(25)
    theirs.set_timesteps(25)
    assert_runs_agree(theirs, ours)


def test_rescale_zero_snr_own_mode_stays_strictly_decreasing():
    linear = Schedule.from_config(SolverConfig(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, rescale_zero_snr=True).validated())
    abar = linear.alphas_cumprod
    assert np.all(np.diff(abar) < 0) and abar[-1] > 0
    lam = linear.lambdas
    # the floor continues lambda by the step before it
    assert lam[-2] - lam[-1] == pytest.approx(lam[-3] - lam[-2], rel=1e-9)
    theirs, _ = pair(rescale_betas_zero_snr=True)
    np.testing.assert_allclose(abar[:-1], theirs.alphas_cumprod.numpy()[:-1].astype(np.float64), rtol=1e-4, atol=1e-7)
    # where diffusers' floor lies below alpha_bar[N-2] (Stable Diffusion's betas) it is diffusers' floor
    sd = Schedule.from_config(SolverConfig(rescale_zero_snr=True).validated()).alphas_cumprod
    sd_theirs = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    assert sd[-1] == float(sd_theirs.alphas_cumprod[-1]) < sd[-2]
    # and a whole own-mode run on the linear zero-SNR schedule is finite
    plan = build_plan(SolverConfig(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, rescale_zero_snr=True, spacing="karras", steps=10))
    assert np.all(np.isfinite(plan.sigmas)) and np.all(np.diff(plan.sigmas) < 0)


# ---------------------------------------------------------------- thresholding


@pytest.mark.parametrize("ratio, max_value", [(0.87, 0.5), (0.0, 1.0), (0.0, 2.0)])
def test_thresholding_edges_match_diffusers(ratio, max_value):
    extra = {"thresholding": True, "dynamic_thresholding_ratio": ratio, "sample_max_value": max_value}
    theirs, ours = pair(**extra)
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    final = assert_runs_agree(theirs, ours)
    # and thresholding is really at work: without it the run ends elsewhere
    plain_theirs, _ = pair()
    plain_theirs.set_timesteps(10)
    assert not torch.allclose(run(plain_theirs, x_start())[-1], final, atol=1e-3)
    # dpmcli's own mode accepts the same values
    own = DPMSolverScheduler(**DIFFUSERS_DEFAULTS, **extra)
    own.set_timesteps(10)
    assert torch.all(torch.isfinite(run(own, x_start())[-1]))


def test_thresholding_ratio_zero_keeps_half_precision():
    _, ours = pair(thresholding=True, dynamic_thresholding_ratio=0.0)
    ours.set_timesteps(10)
    out = run(ours, x_start(torch.float16))[-1]
    assert out.dtype == torch.float16 and torch.all(torch.isfinite(out))


@pytest.mark.parametrize("changes, option", [
    ({"dynamic_thresholding_ratio": -0.1}, "--dynamic-thresholding-ratio"),
    ({"dynamic_thresholding_ratio": 1.5}, "--dynamic-thresholding-ratio"),
    ({"sample_max_value": 0.0}, "--sample-max-value"),
    ({"sample_max_value": math.nan}, "--sample-max-value"),
])
def test_thresholding_values_outside_diffusers_range_are_refused(changes, option):
    with pytest.raises(ConfigError, match=f"^{option}"):
        SolverConfig(thresholding=True, **changes).validated()


# ---------------------------------------------------------------- custom timesteps


@pytest.mark.parametrize("algo", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("final", ["sigma_min", "zero"])
def test_custom_timesteps_match_diffusers(algo, final):
    theirs, ours = pair(algorithm_type=algo, final_sigmas_type=final)
    theirs.set_timesteps(10)
    grid = theirs.timesteps.clone()
    theirs, ours = pair(algorithm_type=algo, final_sigmas_type=final)
    theirs.set_timesteps(timesteps=grid)
    ours.set_timesteps(timesteps=grid)
    if algo.startswith("sde"):
        noise = torch.randn((len(grid), *SHAPE), generator=torch.Generator().manual_seed(0))
        x_theirs = x_ours = x_start()
        for k, t in enumerate(grid):
            x_theirs = theirs.step(model(x_theirs, t), t, x_theirs, variance_noise=noise[k]).prev_sample
            x_ours = ours.step(model(x_ours, t), t, x_ours, variance_noise=noise[k]).prev_sample
        torch.testing.assert_close(x_ours, x_theirs, rtol=1e-5, atol=1e-5)
    else:
        assert_runs_agree(theirs, ours)
    # the same run as set_timesteps(10), as diffusers' own test demands
    _, by_count = pair(algorithm_type=algo, final_sigmas_type=final)
    by_count.set_timesteps(10)
    assert torch.equal(by_count.timesteps, ours.timesteps) and torch.equal(by_count.sigmas, ours.sigmas)


def test_custom_timesteps_are_truncated_as_diffusers_does():
    grid = [998.7, 640.2, 300.9, 10.5]
    theirs, ours = pair()
    theirs.set_timesteps(timesteps=grid)
    ours.set_timesteps(timesteps=grid)
    assert_runs_agree(theirs, ours)
    # dpmcli's own mode keeps them fractional, at their exact noise level
    own = DPMSolverScheduler(**DIFFUSERS_DEFAULTS)
    own.set_timesteps(timesteps=grid)
    assert own.timesteps.tolist() == pytest.approx(grid)
    np.testing.assert_allclose(own.plan.sigmas[:-1], np.exp(-own.schedule.lambda_at(grid)), rtol=1e-12)


def test_custom_timestep_refusals_follow_diffusers():
    _, karras = pair(use_karras_sigmas=True)
    with pytest.raises(ConfigError, match="custom timesteps"):
        karras.set_timesteps(timesteps=[999, 500, 0])
    with pytest.raises(ValueError):  # diffusers refuses it too
        pair(use_karras_sigmas=True)[0].set_timesteps(timesteps=[999, 500, 0])
    _, ours = pair()
    with pytest.raises(ConfigError, match="not custom sigmas"):
        ours.set_timesteps(sigmas=[10.0, 1.0])
    with pytest.raises(ConfigError, match="outside the training timesteps"):
        ours.set_timesteps(timesteps=[1000, 10])
    with pytest.raises(ConfigError, match="must decrease"):
        DPMSolver(timesteps=(10.0, 500.0))


# ---------------------------------------------------------------- trained betas of another length


def test_short_trained_betas_in_compat_are_diffusers_grid():
    betas = np.array([0.1, 0.3])
    theirs, ours = pair(trained_betas=betas)
    assert ours.betas.tolist() == theirs.betas.tolist()
    theirs.set_timesteps(25)
    with pytest.warns(UserWarning, match="trained-betas: 2 betas"):
        ours.set_timesteps(25)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    # diffusers' first step (zero length) is finite, its second divides by h = 0 and is NaN ...
    x = x_start()
    t0, t1 = theirs.timesteps[:2]
    first = theirs.step(model(x, t0), t0, x).prev_sample
    assert torch.all(torch.isfinite(first)) and torch.isnan(theirs.step(model(first, t1), t1, first).prev_sample).all()
    # ... dpmcli computes the same first step and refuses the second with one clear line
    ours_first = ours.step(model(x, t0), t0, x).prev_sample
    torch.testing.assert_close(ours_first, first, rtol=1e-6, atol=1e-6)
    with pytest.raises(NumericalError, match=r"^step 1 \(timestep \d+\).*zero length") as caught:
        ours.step(model(ours_first, t1), t1, ours_first)
    assert "\n" not in str(caught.value)


def test_short_trained_betas_without_compat_set_the_schedule():
    with pytest.warns(UserWarning, match="trained_betas holds 2 values"):
        own = DPMSolverScheduler(**DIFFUSERS_DEFAULTS, trained_betas=[0.1, 0.3])
    assert own.schedule.train_steps == 2
    own.set_timesteps(1)
    assert own.timesteps.tolist() == [1] and torch.isfinite(run(own, x_start())[-1]).all()


# ---------------------------------------------------------------- repeated timesteps


@pytest.mark.parametrize("train, steps, solver_type", [(25, 25, "midpoint"), (25, 25, "heun"), (1000, 1000, "midpoint")])
def test_repeated_timesteps_build_and_fail_only_where_diffusers_gives_nan(train, steps, solver_type):
    theirs, ours = pair(num_train_timesteps=train, solver_type=solver_type)
    theirs.set_timesteps(steps)
    with pytest.warns(UserWarning, match="zero-length"):
        ours.set_timesteps(steps)
    assert len(ours.timesteps) == ours.num_inference_steps == len(theirs.timesteps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    if train == 1000:
        return  # set_timesteps succeeding is what diffusers' test asks of this grid
    x_theirs = x_ours = x_start()
    first_nan = None
    for k, t in enumerate(theirs.timesteps):
        x_theirs = theirs.step(model(x_theirs, t), t, x_theirs).prev_sample
        if not torch.isfinite(x_theirs).all():
            first_nan = k
            break
        x_ours = ours.step(model(x_ours, t), t, x_ours).prev_sample
        torch.testing.assert_close(x_ours, x_theirs, rtol=1e-5, atol=1e-5)
    assert first_nan is not None
    t = theirs.timesteps[first_nan]
    repeated = int(theirs.timesteps[np.nonzero(np.diff(theirs.timesteps.numpy()) == 0)[0][0]])
    with pytest.raises(NumericalError, match=rf"^step {first_nan} \(timestep {int(t)}\).*timestep {repeated} repeats") as caught:
        ours.step(model(x_ours, t), t, x_ours)
    assert "\n" not in str(caught.value)


def test_the_sampler_loop_stops_at_the_failing_row_before_calling_the_model():
    solver_plan = build_plan(SolverConfig(compat="diffusers", train_steps=25, steps=25, beta_schedule="linear", beta_start=0.0001, beta_end=0.02))
    failing = [row.index for row in solver_plan.rows if row.failure]
    assert failing
    assert any("stops there" in w for w in solver_plan.warnings)
    from dpmcli.sampler import sample

    calls = []

    def counting(x, t):
        calls.append(t)
        return model(x, t)

    with pytest.raises(NumericalError, match=f"^step {failing[0]} "):
        sample(solver_plan, counting, x_start())
    assert len(calls) == failing[0]


# ---------------------------------------------------------------- the config round trip diffusers tests


def test_config_survives_every_compatible_scheduler():
    """diffusers' test_compatibles checks only the last compatible class (in set order): check them all."""
    for extra in ({}, {"algorithm_type": "deis"}, {"solver_type": "bh2"}, {"algo": "dpmsolver++", "order": 3}):
        scheduler = DPMSolverScheduler(**DIFFUSERS_DEFAULTS, compat="diffusers", **extra)
        checked = 0
        for other in scheduler.compatibles:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    converted = other.from_config(scheduler.config)
                except ImportError:  # a scheduler whose optional library is absent (DPMSolverSDEScheduler: torchsde)
                    continue
                back = DPMSolverScheduler.from_config(converted.config)
            checked += 1
            assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config), (extra, other)
            extra_keys = set(back.config) - set(scheduler.config)
            assert not extra_keys & set(inspect.signature(DPMSolverScheduler.__init__).parameters)
        assert checked >= len(scheduler.compatibles) - 1 and checked >= 10, checked


# ---------------------------------------------------------------- the Karras ramp


def test_karras_ramp_is_the_formula_and_stable_at_extreme_rho():
    ramp = np.linspace(0.0, 1.0, 12)
    direct = (157.4 ** (1 / 7) + ramp * (0.0292 ** (1 / 7) - 157.4 ** (1 / 7))) ** 7
    np.testing.assert_allclose(karras_ramp(157.4, 0.0292, ramp, 7.0), direct, rtol=1e-13)
    # rho -> infinity tends to the exponential grid, error O(1/rho): a stable evaluation keeps that rate
    exponential = np.exp(np.linspace(math.log(157.4), math.log(0.0292), 12))
    errors = [np.max(np.abs(np.log(karras_ramp(157.4, 0.0292, ramp, rho) / exponential))) for rho in (1e1, 1e2, 1e3)]
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5, errors
    tiny = karras_ramp(157.4, 0.0292, ramp, 1e-3)
    assert np.all(np.isfinite(tiny)) and np.all(np.diff(tiny) < 0)


# ---------------------------------------------------------------- the command line


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code, option):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"dpmcli: error: {option}"), lines[0]
    return lines[0]


def test_cli_repeated_timesteps_schedule_warns_and_sample_exits_3():
    args = ["--compat", "diffusers", "--train-steps", 25, "--steps", 25]
    shown = invoke("schedule", *args, "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert len(doc["steps"]) == 25 and any("timestep 12 repeats" in w for w in doc["warnings"])
    line = one_line_error(invoke("sample", *args, "-q"), 3, "step 13 (timestep 12)")
    assert "timestep 12 repeats" in line


@pytest.mark.parametrize("args, option", [
    (["--beta-end", 0.9999, "--beta-schedule", "linear"], "--beta-end"),
    (["--beta-end", 0.9999, "--compat", "diffusers"], "--beta-end"),
    (["--beta-start", 1e-300], "--beta-start"),
    (["--beta-start", 0.6, "--beta-end", 0.7], "--beta-start"),
    (["--beta-end", 1.0], "--beta-end"),
    (["--train-steps", 100_000_000], "--train-steps"),
    (["--train-steps", 1], "--train-steps"),
    (["--spacing", "karras", "--rho", 1e-9], "--rho"),
    (["--spacing", "karras", "--rho", 1e9], "--rho"),
    (["--lambda-min-clipped", "nan"], "--lambda-min-clipped"),
    (["--lambda-min-clipped", 1e300], "--lambda-min-clipped"),
    (["--steps-offset", -1], "--steps-offset"),
    (["--steps-offset", 10**12], "--steps-offset"),
    (["--spacing", "leading", "--steps-offset", 999], "--steps-offset"),
])
@pytest.mark.parametrize("command", ["schedule", "sample"])
def test_schedule_errors_name_the_option(command, args, option):
    one_line_error(invoke(command, *args, *(["-q"] if command == "sample" else [])), 2, option)


def test_trained_betas_that_remove_all_signal_name_the_file(tmp_path):
    path = tmp_path / "betas.npy"
    np.save(path, np.full(1000, 0.999999))
    line = one_line_error(invoke("schedule", "--trained-betas", path), 2, "--trained-betas")
    assert "smallest normal number" in line
    np.save(path, np.r_[0.01, 1e-20, np.full(998, 0.01)])
    line = one_line_error(invoke("schedule", "--trained-betas", path), 2, "--trained-betas")
    assert "beta 1" in line


def test_beta_end_error_states_a_bound_that_holds():
    line = one_line_error(invoke("schedule", "--beta-end", 0.9999, "--beta-schedule", "linear"), 2, "--beta-end")
    bound = float(line.split("beta-end must be at most ")[1].split()[0])
    assert invoke("schedule", "--beta-end", bound, "--beta-schedule", "linear", "-q").exit_code == 0
    one_line_error(invoke("schedule", "--beta-end", min(bound * 1.01, 0.99), "--beta-schedule", "linear"), 2, "--beta-end")


@pytest.mark.parametrize("rho", [1e-3, 1e3])
def test_extreme_allowed_rho_gives_a_finite_decreasing_grid(rho):
    result = invoke("schedule", "--spacing", "karras", "--rho", rho, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    sigmas = json.loads(result.stdout)["sigmas"]
    assert all(s is not None for s in sigmas) and all(a > b for a, b in zip(sigmas, sigmas[1:]))
