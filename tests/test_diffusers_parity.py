"""--compat diffusers reproduces DPMSolverMultistepScheduler step for step (float32).

Two checks per configuration, with the same model, x_T and injected noise:
* step for step: from diffusers' own state and history at every step, our update agrees within
  1e-5 (relative to max(1, |x|), since some SDE configurations reach |x| ~ 100);
* free-running: the whole trajectories agree within 1e-5 for the ODE algorithms. For the SDE
  algorithms float32 round-off (1 ulp) is amplified step after step by the mixture's sharp
  posterior at low noise, so the free-running bound there is 1e-3.
"""

import itertools

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from dpmcli import DPMSolver
from dpmcli.models import MixtureModel, ring

SPACING_FLAGS = {
    "linspace": {},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "logsnr": {"use_lu_lambdas": True},
}
STEPS = 12


def pair(algo, order, solver_type, spacing, final, prediction, **extra):
    theirs = DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, algorithm_type=algo, solver_order=order,
        solver_type=solver_type, final_sigmas_type=final.replace("-", "_"), prediction_type=prediction,
        **SPACING_FLAGS[spacing], **extra,
    )
    theirs.set_timesteps(STEPS)
    ours = DPMSolver(
        algo=algo, order=order, solver_type=solver_type, spacing=spacing, final_sigma=final, prediction_type=prediction,
        steps=STEPS, compat="diffusers", **extra,
    )
    return theirs, ours


def inputs(seed=0, shape=(256, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn((STEPS, *shape), generator=g)


class ImageShaped:
    """The ring model on (batch, 2, 1, 1) latents: diffusers' thresholding needs image-shaped samples."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t):
        return self.model(x.reshape(x.shape[0], 2), t).reshape(x.shape)


def compare(algo, order, solver_type, spacing, final, prediction, **extra):
    theirs, ours = pair(algo, order, solver_type, spacing, final, prediction, **extra)
    np.testing.assert_array_equal(theirs.timesteps.numpy(), np.array(ours.timesteps))
    model = ImageShaped(MixtureModel(ring(), ours.plan.schedule, prediction))
    x_T, noise = inputs(shape=(256, 2, 1, 1))
    # step for step: both update diffusers' state with the same model output
    x, worst_step = x_T.clone(), 0.0
    for i, t in enumerate(theirs.timesteps):
        out = model(x, t)
        expected = theirs.step(out, t, x, variance_noise=noise[i]).prev_sample
        got = ours.step(out, t, x, noise=noise[i])
        worst_step = max(worst_step, (got - expected).abs().max().item() / max(1.0, expected.abs().max().item()))
        x = expected
    # free-running
    theirs, ours = pair(algo, order, solver_type, spacing, final, prediction, **extra)
    a, b = x_T.clone(), x_T.clone()
    for i, t in enumerate(theirs.timesteps):
        a = theirs.step(model(a, t), t, a, variance_noise=noise[i]).prev_sample
        b = ours.step(model(b, t), t, b, noise=noise[i])
    worst_run = (a - b).abs().max().item() / max(1.0, a.abs().max().item())
    return worst_step, worst_run


CASES = [
    (algo, order, solver_type)
    for algo in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
    for order in (1, 2, 3)
    for solver_type in (("midpoint", "heun") if order == 2 else ("midpoint",))
    if not (algo == "sde-dpmsolver" and order == 3)
]


@pytest.mark.parametrize("algo, order, solver_type", CASES)
def test_compat_matches_diffusers(algo, order, solver_type):
    finals = ("zero", "sigma-min") if algo.endswith("++") else ("sigma-min",)
    run_bound = 1e-5 if not algo.startswith("sde") else 1e-3
    for spacing, final, prediction in itertools.product(sorted(SPACING_FLAGS), finals, ("epsilon", "sample", "v_prediction")):
        worst_step, worst_run = compare(algo, order, solver_type, spacing, final, prediction)
        label = (algo, order, solver_type, spacing, final, prediction)
        assert worst_step <= 1e-5, (label, worst_step)
        assert worst_run <= run_bound, (label, worst_run)


@pytest.mark.parametrize(
    "extra",
    [
        {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
        {"lower_order_final": False},
        {"euler_at_final": True},
    ],
)
@pytest.mark.parametrize(
    "algo, spacing, final",
    [("dpmsolver++", "karras", "zero"), ("dpmsolver++", "linspace", "sigma-min"), ("dpmsolver", "linspace", "sigma-min")],
)
def test_compat_options_match_diffusers(extra, algo, spacing, final):
    worst_step, worst_run = compare(algo, 3, "midpoint", spacing, final, "epsilon", **extra)
    assert worst_step <= 1e-5 and worst_run <= 1e-5, (worst_step, worst_run)


def test_own_mode_differs_from_diffusers_only_by_float64():
    """Without --compat the default run still lands within float32 accuracy of diffusers on a linspace grid."""
    theirs, _ = pair("dpmsolver++", 2, "midpoint", "linspace", "zero", "epsilon")
    ours = DPMSolver(steps=STEPS)
    model = MixtureModel(ring(), ours.plan.schedule)
    x_T, _ = inputs()
    a, b = x_T.clone(), x_T.clone().double()
    for t in theirs.timesteps:
        a = theirs.step(model(a, t), t, a).prev_sample
    for t in ours.timesteps:
        b = ours.step(model(b, t), t, b)
    assert (a.double() - b).abs().max().item() < 1e-3


# ---------------------------------------------------------------- DPMSolverSinglestepScheduler

from diffusers import DPMSolverSinglestepScheduler  # noqa: E402

SINGLESTEP_SPACINGS = ("linspace", "karras", "exponential", "beta")


def singlestep_pair(algo, order, solver_type, spacing, final, lower_order_final, steps):
    theirs = DPMSolverSinglestepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, algorithm_type=algo, solver_order=order,
        solver_type=solver_type, final_sigmas_type=final.replace("-", "_"), lower_order_final=lower_order_final,
        **SPACING_FLAGS[spacing],
    )
    theirs.set_timesteps(steps)
    ours = DPMSolver(
        algo=algo, order=order, solver_type=solver_type, spacing=spacing, final_sigma=final,
        lower_order_final=lower_order_final, steps=steps, method="singlestep", compat="diffusers",
    )
    return theirs, ours


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_compat_singlestep_matches_diffusers(algo, order):
    """diffusers' singlestep groups `order` grid points into one step from the group's first point.

    Step for step (same state, same noise) within 1e-5; free-running within 1e-4 for the ODE
    algorithms and 1e-3 for the SDE one (float32 round-off amplified over the run, as above).
    """
    finals = ("zero", "sigma-min") if algo.endswith("++") else ("sigma-min",)
    for solver_type, spacing, final, lower, steps in itertools.product(("midpoint", "heun"), SINGLESTEP_SPACINGS, finals, (True, False), (9, 10, 11)):
        theirs, ours = singlestep_pair(algo, order, solver_type, spacing, final, lower, steps)
        label = (algo, order, solver_type, spacing, final, lower, steps)
        np.testing.assert_array_equal(theirs.timesteps.numpy(), np.array(ours.timesteps))
        assert list(theirs.order_list) == list(ours.plan.orders), label
        model = MixtureModel(ring(), ours.plan.schedule)
        x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
        sde = algo.startswith("sde")
        # diffusers' singlestep scheduler draws its own noise each step: replay the same stream
        theirs_rng, ours_rng = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        x, worst_step = x_T.clone(), 0.0
        for t in theirs.timesteps:
            out = model(x, t)
            expected = theirs.step(out, t, x, generator=theirs_rng).prev_sample
            z = torch.randn(x.shape, generator=ours_rng) if sde else None
            got = ours.step(out, t, x, noise=z)
            worst_step = max(worst_step, (got - expected).abs().max().item() / max(1.0, expected.abs().max().item()))
            x = expected
        assert worst_step <= 1e-5, (label, worst_step)
        theirs, ours = singlestep_pair(algo, order, solver_type, spacing, final, lower, steps)
        theirs_rng, ours_rng = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        a, b = x_T.clone(), x_T.clone()
        for t in theirs.timesteps:
            a = theirs.step(model(a, t), t, a, generator=theirs_rng).prev_sample
            b = ours.step(model(b, t), t, b, noise=torch.randn(b.shape, generator=ours_rng) if sde else None)
        worst_run = (a - b).abs().max().item() / max(1.0, a.abs().max().item())
        assert worst_run <= (1e-3 if sde else 1e-4), (label, worst_run)
