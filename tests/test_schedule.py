"""Schedules and step grids against diffusers' set_timesteps and against their definitions."""

import math

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler

from dpmcli import ConfigError, SolverConfig, build_plan
from dpmcli.schedule import Schedule

DIFFUSERS_FLAGS = {
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading", "steps_offset": 1},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "logsnr": {"use_lu_lambdas": True},
}
BETAS = {
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}


def diffusers_schedule(spacing, steps, final="zero", betas="scaled_linear", **extra):
    flags = dict(DIFFUSERS_FLAGS[spacing])
    flags.update(extra)
    scheduler = DPMSolverMultistepScheduler(**BETAS[betas], final_sigmas_type=final.replace("-", "_"), **flags)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.numpy(), scheduler.sigmas.numpy().astype(np.float64)


def our_config(spacing, steps, final="zero", betas="scaled_linear", compat="none", **extra):
    offset = 1 if spacing == "leading" else 0
    return SolverConfig(spacing=spacing, steps=steps, final_sigma=final, compat=compat, steps_offset=offset, **BETAS[betas], **extra)


@pytest.mark.parametrize("spacing", sorted(DIFFUSERS_FLAGS))
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 250])
@pytest.mark.parametrize("final", ["zero", "sigma-min"])
@pytest.mark.parametrize("betas", sorted(BETAS))
def test_compat_grid_is_diffusers_grid(spacing, steps, final, betas):
    if spacing == "beta" and steps == 1:
        pytest.skip("diffusers' beta sigmas need at least two points")
    timesteps, sigmas = diffusers_schedule(spacing, steps, final, betas)
    plan = build_plan(our_config(spacing, steps, final, betas, compat="diffusers"))
    np.testing.assert_array_equal(np.array(plan.timestep_values), timesteps)
    np.testing.assert_array_equal(plan.sigmas, sigmas)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 20, 100])
def test_own_integer_grids_match_diffusers_in_float64(spacing, steps):
    timesteps, sigmas = diffusers_schedule(spacing, steps)
    plan = build_plan(our_config(spacing, steps))
    np.testing.assert_array_equal(np.array(plan.timestep_values), timesteps)
    # Our table is float64; diffusers' is float32: they agree to float32 accuracy.
    np.testing.assert_allclose(plan.sigmas, sigmas, rtol=2e-5, atol=0)


@pytest.mark.parametrize("spacing", ["karras", "exponential", "beta"])
def test_own_sigma_grids_match_diffusers_sigmas(spacing):
    _, sigmas = diffusers_schedule(spacing, 25)
    plan = build_plan(our_config(spacing, 25))
    np.testing.assert_allclose(plan.sigmas, sigmas, rtol=2e-5)
    # ... but our model evaluations sit exactly at those sigmas (fractional timesteps).
    lam = plan.schedule.lambda_at(plan.timesteps)
    np.testing.assert_allclose(np.exp(-lam), plan.sigmas[:-1], rtol=1e-12)


def test_own_sigma_grid_with_sigma_min_has_no_zero_length_step():
    plan = build_plan(our_config("karras", 10, final="sigma-min"))
    assert np.all(plan.h > 0)
    assert plan.sigmas[-1] == pytest.approx(plan.schedule.sigmas[0])
    compat = build_plan(our_config("karras", 10, final="sigma-min", compat="diffusers"))
    assert compat.h[-1] == 0.0 and any("zero-length" in w for w in compat.warnings)


def test_dpm_solver_grids_follow_their_definitions():
    n = 12
    logsnr = build_plan(our_config("logsnr", n, final="sigma-min"))
    np.testing.assert_allclose(np.diff(logsnr.lambdas), np.diff(logsnr.lambdas)[0], rtol=1e-10)
    assert logsnr.timesteps[0] == 999.0 and logsnr.sigmas[-1] == pytest.approx(logsnr.schedule.sigmas[0], rel=1e-12)
    uniform = build_plan(our_config("time-uniform", n))
    np.testing.assert_allclose(uniform.timesteps, np.linspace(999, 0, n + 1)[:-1])
    quadratic = build_plan(our_config("time-quadratic", n))
    t = (quadratic.timesteps + 1) / 1000
    np.testing.assert_allclose(np.diff(np.sqrt(t)), np.diff(np.sqrt(t))[0], rtol=1e-10)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing", "time-uniform", "logsnr", "time-quadratic", "karras", "exponential", "beta"])
@pytest.mark.parametrize("final", ["zero", "sigma-min"])
def test_every_grid_is_finite_and_strictly_decreasing(spacing, final):
    for steps in (1, 2, 19, 998):
        plan = build_plan(our_config(spacing, steps, final))
        assert np.all(np.isfinite(plan.timesteps)) and np.all(np.isfinite(plan.sigmas))
        assert np.all(np.diff(plan.sigmas) < 0), (spacing, steps)
        assert not np.any(np.isnan(plan.h))
        assert plan.steps == len(plan.rows) == len(plan.sigmas) - 1


def test_rescaled_zero_snr_schedule_matches_diffusers():
    scheduler = DPMSolverMultistepScheduler(**BETAS["scaled_linear"], rescale_betas_zero_snr=True, timestep_spacing="trailing")
    ours = Schedule.from_config(SolverConfig(rescale_zero_snr=True).validated())
    np.testing.assert_allclose(ours.alphas_cumprod, scheduler.alphas_cumprod.numpy(), rtol=1e-4, atol=1e-7)
    assert ours.alphas_cumprod[-1] == 2.0**-24
    scheduler.set_timesteps(10)
    plan = build_plan(SolverConfig(rescale_zero_snr=True, spacing="trailing", steps=10, compat="diffusers"))
    np.testing.assert_array_equal(plan.sigmas, scheduler.sigmas.numpy().astype(np.float64))


def test_lambda_min_clipped_matches_diffusers():
    timesteps, sigmas = diffusers_schedule("linspace", 20, betas="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    plan = build_plan(our_config("linspace", 20, betas="squaredcos_cap_v2", lambda_min_clipped=-5.1))
    np.testing.assert_array_equal(np.array(plan.timestep_values), timesteps)
    assert plan.lambdas[0] >= -5.1
    np.testing.assert_allclose(plan.sigmas, sigmas, rtol=2e-5)


def test_custom_sigmas_and_their_errors():
    plan = build_plan(SolverConfig(sigmas=(14.0, 7.0, 2.0, 0.5, 0.0)))
    assert plan.steps == 4 and plan.config.spacing == "custom"
    np.testing.assert_allclose(np.exp(-plan.schedule.lambda_at(plan.timesteps)), [14.0, 7.0, 2.0, 0.5], rtol=1e-12)
    for bad in [(14.0, 20.0, 0.0), (100.0, 1.0, 0.0), (5.0,), (5.0, -1.0), (5.0, math.nan)]:
        with pytest.raises(ConfigError) as info:
            build_plan(SolverConfig(sigmas=bad))
        assert "--sigmas" in str(info.value)


def test_repeated_sigmas_are_removed_with_a_warning():
    plan = build_plan(SolverConfig(sigmas=(10.0, 5.0, 5.0, 1.0, 1.0, 0.0)))
    assert list(plan.sigmas) == [10.0, 5.0, 1.0, 0.0]
    assert any("removed 2 zero-length" in w for w in plan.warnings)
    with pytest.raises(ConfigError, match="steps-offset"):
        build_plan(SolverConfig(spacing="leading", steps=999, steps_offset=1))
    leading = build_plan(SolverConfig(spacing="leading", steps=1000))
    assert np.all(np.diff(leading.sigmas) < 0) and leading.steps < 1000 and leading.warnings


def test_trained_betas_give_the_same_schedule_as_the_named_one():
    betas = tuple(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    named = build_plan(SolverConfig(steps=10))
    trained = build_plan(SolverConfig(steps=10, trained_betas=betas))
    np.testing.assert_allclose(trained.sigmas, named.sigmas, rtol=1e-12)
    assert trained.config.beta_schedule == "trained"


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"algo": "ddim"}, "--algo"),
        ({"order": 0}, "--order"),
        ({"order": 9}, "--order"),
        ({"order": 6, "steps": 5}, "--order"),
        ({"method": "singlestep", "order": 4}, "--order"),
        ({"method": "adaptive", "order": 1}, "--order"),
        ({"method": "adaptive", "rtol": -1.0}, "--rtol"),
        ({"startup": "singlestep", "order": 3, "algo": "sde-dpmsolver++"}, "--startup"),
        ({"startup": "singlestep", "order": 3, "steps": 2}, "--startup"),
        ({"compat": "diffusers", "method": "adaptive"}, "--compat"),
        ({"compat": "diffusers", "method": "singlestep", "spacing": "trailing"}, "--compat"),
        ({"steps": 0}, "--steps"),
        ({"steps": 1001}, "--steps"),
        ({"spacing": "cosine"}, "--spacing"),
        ({"beta_schedule": "quadratic"}, "--beta-schedule"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "--beta-start"),
        ({"final_sigma": "one"}, "--final-sigma"),
        ({"solver_type": "rk4"}, "--solver-type"),
        ({"prediction_type": "flow"}, "--prediction-type"),
        ({"coefficients": "magic"}, "--coefficients"),
        ({"compat": "k-diffusion-0.2"}, "--compat"),
        ({"compat": "k-diffusion", "order": 3}, "--compat"),
        ({"method": "ancestral", "order": 3}, "--order"),
        ({"steps_offset": 5000}, "--steps-offset"),
        ({"rho": -1.0}, "--rho"),
        ({"compat": "diffusers", "algo": "dpmsolver"}, "--compat"),
        ({"compat": "diffusers", "algo": "sde-dpmsolver", "order": 3, "final_sigma": "sigma-min"}, "--compat"),
        ({"compat": "diffusers", "spacing": "time-uniform"}, "--compat"),
        ({"compat": "diffusers", "coefficients": "exact"}, "--compat"),
        ({"lambda_min_clipped": 100.0}, "--lambda-min-clipped"),
    ],
)
def test_invalid_options_name_the_option(changes, option):
    with pytest.raises(ConfigError) as info:
        build_plan(SolverConfig(**changes))
    message = str(info.value)
    assert message.startswith(option) and "\n" not in message
