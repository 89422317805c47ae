"""DPMSolverScheduler: dpmcli's plan behind diffusers' scheduler interface.

Cross-checks only, no typed-in numbers:
* driven the way a pipeline drives it, it gives exactly (torch.equal) what dpmcli's own loop
  gives with the same plan, model, x_T and noise: every algorithm and order, both coefficient
  forms, every spacing and method;
* with compat="diffusers" it follows DPMSolverMultistepScheduler: step for step within 1e-5
  relative to max(1, |x|) and free-running within 1e-5 (ODE) or 1e-3 (SDE), the bounds of
  test_diffusers_parity.py; inside a DDPMPipeline with a tiny random UNet the images agree
  within 1e-5;
* other schedulers' configs carry their schedule over, and dpmcli's names win over diffusers'.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from test_schedule import DIFFUSERS_FLAGS

from dpmcli import ConfigError, SolverConfig, build_plan
from dpmcli.config import SPACINGS
from dpmcli.diffusers import DPMSolverScheduler
from dpmcli.models import MixtureModel, ring
from dpmcli.noise import ArrayNoise, GaussianNoise, initial_latents
from dpmcli.sampler import StepEvent, sample
from dpmcli.stats import STAT_KEYS, StepStatistics

# Stable Diffusion's schedule: SolverConfig's defaults, given to the scheduler by diffusers' names.
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
ALGOS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
STEPS = 10


def drive(scheduler, model, x, noises=None):
    """A pipeline's loop over ``scheduler.timesteps``.

    The model sees the plan's float64 timestep, as in dpmcli's loop, so both runs evaluate it at
    the same point; ``step`` gets the tensor entry a pipeline passes (float32 on fractional grids).
    """
    values = scheduler.plan.timestep_values
    for i, t in enumerate(scheduler.timesteps):
        z = None if noises is None else noises[i]
        x = scheduler.step(model(x, values[i]), t, x, variance_noise=z).prev_sample
    return x


def x_T(shape=(64, 2)):
    return initial_latents(0, shape, "cpu", torch.float32)


def relative_gap(a, b):
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


# ---------------------------------------------------------------- same numbers as dpmcli's loop


@pytest.mark.parametrize("coefficients", ["published", "exact"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algo", ALGOS)
def test_scheduler_equals_dpmcli_loop(algo, order, coefficients):
    prediction = PREDICTIONS[(ALGOS.index(algo) + order) % 3]
    scheduler = DPMSolverScheduler(**SD_SCHEDULE, algo=algo, order=order, coefficients=coefficients, prediction_type=prediction, seed=7)
    scheduler.set_timesteps(STEPS)
    plan = scheduler.plan
    # the config maps onto the SolverConfig a user of the command line would write
    same = build_plan(SolverConfig(algo=algo, order=order, coefficients=coefficients, prediction_type=prediction, steps=STEPS))
    assert plan.rows == same.rows
    model = MixtureModel(ring(), plan.schedule, prediction)
    start = x_T()
    ours = drive(scheduler, model, start)
    assert torch.equal(ours, sample(plan, model, start, noise=GaussianNoise(7)).samples)
    if algo.startswith("sde"):
        noises = torch.randn((plan.nfe, *start.shape), generator=torch.Generator().manual_seed(1))
        scheduler.set_timesteps(STEPS)
        injected = drive(scheduler, model, start, noises)
        assert torch.equal(injected, sample(plan, model, start, noise=ArrayNoise(noises.numpy())).samples)
        assert not torch.equal(injected, ours)


GRIDS = [spacing for spacing in SPACINGS if spacing != "custom"]


@pytest.mark.parametrize("spacing", GRIDS + ["custom sigmas", "custom timesteps"])
def test_every_spacing_steps_like_dpmcli(spacing):
    options = {"algo": "dpmsolver++", "order": 3, "final_sigma": "sigma-min"}
    if spacing in GRIDS:
        options["spacing"] = spacing
    scheduler = DPMSolverScheduler(**SD_SCHEDULE, **options)
    reference_config = SolverConfig(**options, steps=STEPS)
    if spacing == "custom sigmas":
        levels = tuple(np.geomspace(12.0, 0.05, STEPS))
        scheduler.set_timesteps(sigmas=list(levels))
        sigma_min = float(scheduler.schedule.sigmas[0])
        reference_config = reference_config.with_options(sigmas=levels + (sigma_min,))
    elif spacing == "custom timesteps":
        chosen = [999, 900, 750, 600, 420, 300, 180, 90, 40, 10]
        scheduler.set_timesteps(timesteps=chosen)
        assert scheduler.timesteps.tolist() == chosen and scheduler.timesteps.dtype == torch.int64
        reference_config = reference_config.with_options(sigmas=tuple(scheduler.plan.sigmas))
    else:
        scheduler.set_timesteps(STEPS)
    plan = scheduler.plan
    reference = build_plan(reference_config)
    assert plan.rows == reference.rows
    integral = all(isinstance(t, int) for t in plan.timestep_values)
    assert scheduler.timesteps.dtype == (torch.int64 if integral else torch.float32)
    model = MixtureModel(ring(), plan.schedule)
    assert torch.equal(drive(scheduler, model, x_T()), sample(plan, model, x_T()).samples)


@pytest.mark.parametrize(
    "options",
    [
        {"method": "singlestep", "order": 3, "algo": "dpmsolver"},
        {"method": "singlestep", "order": 2, "coefficients": "exact"},
        {"startup": "singlestep", "order": 4, "coefficients": "exact"},
        {"order": 5, "algo": "sde-dpmsolver++", "euler_at_final": True},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
    ],
)
def test_methods_with_extra_model_calls_step_like_dpmcli(options):
    """Singlestep stages and start-up sweeps are entries of `timesteps`: one step() per model call."""
    scheduler = DPMSolverScheduler(**SD_SCHEDULE, **options, seed=3)
    scheduler.set_timesteps(STEPS)
    plan = scheduler.plan
    assert len(scheduler.timesteps) == plan.nfe and scheduler.num_inference_steps == plan.steps
    model = MixtureModel(ring(), plan.schedule, options.get("prediction_type", "epsilon"))
    assert torch.equal(drive(scheduler, model, x_T()), sample(plan, model, x_T(), noise=GaussianNoise(3)).samples)


def test_half_precision_is_stepped_in_float32():
    scheduler = DPMSolverScheduler(**SD_SCHEDULE, algo="dpmsolver++", order=3)
    scheduler.set_timesteps(STEPS)
    model = MixtureModel(ring(), scheduler.plan.schedule)
    full = drive(scheduler, model, x_T())
    scheduler.set_timesteps(STEPS)
    half = drive(scheduler, model, x_T().half())
    assert half.dtype == torch.float16
    # float16 latents carry ~3 significant digits between steps; the arithmetic itself is float32
    assert relative_gap(half.float(), full) < 1e-2


# ---------------------------------------------------------------- compat="diffusers"

SIGMA_FLAGS = {**DIFFUSERS_FLAGS, "linspace": {}}  # linspace is diffusers' default: no flag at all
COMPAT_CASES = [
    ("dpmsolver++", 2, "midpoint", "linspace", "zero", "epsilon", {}),
    ("dpmsolver++", 3, "midpoint", "karras", "zero", "v_prediction", {}),
    ("dpmsolver++", 1, "midpoint", "beta", "zero", "sample", {}),
    ("dpmsolver++", 3, "midpoint", "leading", "zero", "epsilon", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}),
    ("sde-dpmsolver++", 2, "heun", "exponential", "zero", "epsilon", {}),
    ("sde-dpmsolver++", 3, "midpoint", "trailing", "zero", "sample", {}),
    ("dpmsolver", 3, "midpoint", "leading", "sigma_min", "epsilon", {"lower_order_final": False}),
    ("sde-dpmsolver", 2, "midpoint", "logsnr", "sigma_min", "v_prediction", {}),
]


def compat_pair(algo, order, solver_type, spacing, final, prediction, extra, steps=12):
    theirs = DPMSolverMultistepScheduler(
        **SD_SCHEDULE, algorithm_type=algo, solver_order=order, solver_type=solver_type, final_sigmas_type=final,
        prediction_type=prediction, **SIGMA_FLAGS[spacing], **extra,
    )
    ours = DPMSolverScheduler.from_config(theirs.config, compat="diffusers")
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    return theirs, ours


class ImageShaped:
    """The ring model on (batch, 2, 1, 1) latents: diffusers' thresholding needs image-shaped samples."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t):
        return self.model(x.reshape(x.shape[0], 2), t).reshape(x.shape)


@pytest.mark.parametrize("algo, order, solver_type, spacing, final, prediction, extra", COMPAT_CASES)
def test_compat_matches_dpmsolver_multistep(algo, order, solver_type, spacing, final, prediction, extra):
    theirs, ours = compat_pair(algo, order, solver_type, spacing, final, prediction, extra)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    model = ImageShaped(MixtureModel(ring(), ours.plan.schedule, prediction))
    start = x_T((128, 2, 1, 1))
    noises = torch.randn((len(theirs.timesteps), *start.shape), generator=torch.Generator().manual_seed(2))
    # step for step: both advance diffusers' latent with the same model output and noise
    x, worst_step = start, 0.0
    for i, t in enumerate(theirs.timesteps):
        out = model(x, t)
        expected = theirs.step(out, t, x, variance_noise=noises[i]).prev_sample
        got = ours.step(out, t, x, variance_noise=noises[i]).prev_sample
        worst_step = max(worst_step, relative_gap(got, expected))
        x = expected
    assert worst_step <= 1e-5
    # free-running
    theirs.set_timesteps(12)
    ours.set_timesteps(12)
    a, b = start, start
    for i, t in enumerate(theirs.timesteps):
        a = theirs.step(model(a, t), t, a, variance_noise=noises[i]).prev_sample
        b = ours.step(model(b, t), t, b, variance_noise=noises[i]).prev_sample
    assert relative_gap(b, a) <= (1e-3 if algo.startswith("sde") else 1e-5)


def all_statistics_finite(rows):
    """The latent and x0 statistics; the plan's columns hold h = inf on a step to sigma 0."""
    keys = [*STAT_KEYS, *(f"x0_{k}" for k in STAT_KEYS)]
    return all(math.isfinite(row[k]) for row in rows for k in keys) and all(row["nonfinite"] == 0 for row in rows)


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


@pytest.mark.parametrize(
    "algo, order, extra",
    [
        ("dpmsolver++", 2, {}),
        ("sde-dpmsolver++", 3, {"use_karras_sigmas": True}),
        ("dpmsolver", 3, {"final_sigmas_type": "sigma_min"}),
    ],
)
def test_compat_inside_a_pipeline(algo, order, extra):
    """DDPMPipeline with a random UNet: same generator, same images; the SDE draws its noise from the generator.

    The UNet is read as an x0 predictor: a random network's output then keeps the images inside
    [0, 1], where the pipeline's final clamp would otherwise hide differences.
    """
    theirs = DPMSolverMultistepScheduler(algorithm_type=algo, solver_order=order, prediction_type="sample", **extra)
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=theirs)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=8, output_type="np").images

    expected = run()
    pipe.scheduler = DPMSolverScheduler.from_config(pipe.scheduler.config, compat="diffusers")
    stats = pipe.scheduler.record_statistics()
    got = run()
    assert 0.0 < expected.std() and np.mean((expected > 0) & (expected < 1)) > 0.9
    assert np.abs(got - expected).max() <= 1e-5
    assert len(stats.rows) == 8
    assert all_statistics_finite(stats.rows)


@pytest.mark.parametrize("compat", ["diffusers", "none"])
def test_run_from_the_middle_of_the_grid(compat):
    """img2img: add_noise at timesteps[begin], then step through timesteps[begin:] with a fresh warm-up."""
    begin = 4
    theirs, ours = compat_pair("dpmsolver++", 3, "midpoint", "linspace", "zero", "epsilon", {}, steps=STEPS)
    if compat == "none":
        ours = DPMSolverScheduler.from_config(theirs.config)
        ours.set_timesteps(STEPS)
    model = MixtureModel(ring(), ours.plan.schedule)
    clean = ring().sample(64, torch.Generator().manual_seed(3)).float()
    noise = x_T()
    timesteps = ours.timesteps[begin:]
    ours.set_begin_index(begin)
    latents = ours.add_noise(clean, noise, timesteps[:1])
    alpha, sigma = model.noise_level(timesteps[0])
    torch.testing.assert_close(latents, alpha * clean + sigma * noise)
    mid = latents
    for t in timesteps:
        mid = ours.step(model(mid, t), t, mid).prev_sample
    if compat == "diffusers":
        theirs.set_begin_index(begin)
        expected = theirs.add_noise(clean, noise, timesteps[:1])
        assert relative_gap(latents, expected) <= 1e-6
        for t in timesteps:
            expected = theirs.step(model(expected, t), t, expected).prev_sample
        assert relative_gap(mid, expected) <= 1e-5
    else:
        # the same run as dpmcli's loop on the rest of the grid
        tail = build_plan(ours.plan.config.with_options(sigmas=tuple(ours.plan.sigmas[begin:])))
        assert torch.equal(mid, sample(tail, model, latents).samples)
    # a pipeline that slices timesteps without set_begin_index starts where its first timestep sits
    ours.set_timesteps(STEPS)
    again = latents
    for t in timesteps:
        again = ours.step(model(again, t), t, again).prev_sample
    assert torch.equal(again, mid)


def test_add_noise_follows_the_training_schedule():
    ddpm = DDPMScheduler(**SD_SCHEDULE)
    ours = DPMSolverScheduler.from_config(ddpm.config)
    clean, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 321, 999])
    torch.testing.assert_close(ours.add_noise(clean, noise, t), ddpm.add_noise(clean, noise, t), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- configuration


def test_dpmsolver_multistep_config_carries_over_and_our_names_win():
    theirs = DPMSolverMultistepScheduler(
        **SD_SCHEDULE, algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun", use_karras_sigmas=True,
        final_sigmas_type="sigma_min", prediction_type="v_prediction", lambda_min_clipped=-5.1, euler_at_final=True,
    )
    ours = DPMSolverScheduler.from_config(theirs.config)
    cfg = ours.solver_config
    assert (cfg.algo, cfg.order, cfg.solver_type, cfg.spacing, cfg.final_sigma) == ("sde-dpmsolver++", 3, "heun", "karras", "sigma-min")
    assert (cfg.prediction_type, cfg.lambda_min_clipped, cfg.euler_at_final) == ("v_prediction", -5.1, True)
    assert torch.equal(ours.betas, theirs.betas)
    # explicit dpmcli names win, and are written back under diffusers' names
    chosen = DPMSolverScheduler.from_config(theirs.config, algo="dpmsolver++", order=1, spacing="trailing")
    assert (chosen.solver_config.algo, chosen.solver_config.order, chosen.solver_config.spacing) == ("dpmsolver++", 1, "trailing")
    back = DPMSolverMultistepScheduler.from_config(chosen.config)
    assert (back.config.algorithm_type, back.config.solver_order, back.config.timestep_spacing) == ("dpmsolver++", 1, "trailing")
    assert not back.config.use_karras_sigmas
    # and the written-back config reads the same to this class again, and still yields to diffusers' names
    assert DPMSolverScheduler.from_config(chosen.config).solver_config == chosen.solver_config
    assert DPMSolverScheduler.from_config(chosen.config, algorithm_type="sde-dpmsolver++").solver_config.algo == "sde-dpmsolver++"


@pytest.mark.parametrize(
    "other",
    [
        DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"),
        PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, steps_offset=1),
        DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_small", clip_sample=True),
        EulerDiscreteScheduler(**SD_SCHEDULE, use_karras_sigmas=True, timestep_spacing="trailing"),
        UniPCMultistepScheduler(**SD_SCHEDULE, solver_type="bh2"),
        DEISMultistepScheduler(**SD_SCHEDULE, algorithm_type="deis", solver_type="logrho"),
    ],
    ids=["ddim", "pndm", "ddpm", "euler", "unipc", "deis"],
)
def test_other_schedulers_configs_carry_the_schedule(other):
    config = {**other.config, "a_key_from_the_future": 1}  # unknown keys are ignored
    ours = DPMSolverScheduler.from_config(config, algo="dpmsolver++", order=3, compat="diffusers")
    assert torch.equal(ours.betas, other.betas)
    assert torch.equal(ours.alphas_cumprod, other.alphas_cumprod)
    assert ours.solver_config.steps_offset == other.config.steps_offset
    # DEIS' and UniPC's words for the solver slots are read as diffusers reads them
    plain = DPMSolverScheduler.from_config(other.config).solver_config
    assert (plain.algo, plain.solver_type) == ("dpmsolver++", "midpoint")
    # the grid is the one diffusers' own DPM-Solver builds from the same config
    reference = DPMSolverMultistepScheduler.from_config(other.config, solver_order=3, algorithm_type="dpmsolver++")
    reference.set_timesteps(STEPS)
    ours.set_timesteps(STEPS)
    assert torch.equal(ours.timesteps, reference.timesteps)


def test_scheduler_interface():
    scheduler = DPMSolverScheduler(**SD_SCHEDULE, order=3)
    assert scheduler.order == 1 and scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000
    assert "DPMSolverMultistepScheduler" in scheduler._compatibles
    assert DPMSolverMultistepScheduler in scheduler.compatibles
    scheduler.set_timesteps(6, device="cpu")
    x = x_T()
    assert scheduler.scale_model_input(x, scheduler.timesteps[0]) is x
    assert scheduler.step_index is None
    model = MixtureModel(ring(), scheduler.plan.schedule)
    for i, t in enumerate(scheduler.timesteps):
        (x,) = scheduler.step(model(x, t), t.item() if i % 2 else t, x, return_dict=False)
        assert scheduler.step_index == i + 1


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("options", [{"algo": "sde-dpmsolver++", "order": 3}, {"method": "singlestep", "order": 3}])
def test_record_statistics_gives_the_rows_of_dpmcli_sample(options):
    scheduler = DPMSolverScheduler(**SD_SCHEDULE, **options, seed=5)
    stats = scheduler.record_statistics()
    events: list = []
    scheduler.add_callback(events.append)
    scheduler.set_timesteps(STEPS)
    plan = scheduler.plan
    model = MixtureModel(ring(), plan.schedule)
    drive(scheduler, model, x_T())
    reference = StepStatistics()
    sample(plan, model, x_T(), noise=GaussianNoise(5), callbacks=(reference,))
    assert len(stats.rows) == plan.nfe
    assert stats.rows == reference.rows
    assert all_statistics_finite(stats.rows)
    assert all(isinstance(e, StepEvent) for e in events)
    # callbacks stay across runs
    scheduler.set_timesteps(STEPS)
    drive(scheduler, model, x_T())
    assert stats.rows == reference.rows * 2
    scheduler.remove_callback(stats)
    scheduler.set_timesteps(STEPS)
    drive(scheduler, model, x_T())
    assert len(stats.rows) == 2 * plan.nfe and len(events) == 3 * plan.nfe


# ---------------------------------------------------------------- errors


def one_line_error(call, match):
    with pytest.raises(ConfigError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_errors_are_one_line_and_name_the_problem():
    scheduler = DPMSolverScheduler(**SD_SCHEDULE)
    x = x_T()
    one_line_error(lambda: scheduler.step(x, 999, x), "set_timesteps")
    scheduler.set_timesteps(3)
    t0, t1, t2 = scheduler.timesteps
    one_line_error(lambda: scheduler.step(x, 555, x), "got timestep 555.*timestep 999")  # not on the grid
    x = scheduler.step(x, t0, x).prev_sample
    one_line_error(lambda: scheduler.step(x, t2, x), "timestep")  # skipped one
    x = scheduler.step(x, t1, x).prev_sample
    x = scheduler.step(x, t2, x).prev_sample
    one_line_error(lambda: scheduler.step(x, t2, x), "done.*set_timesteps")
    one_line_error(lambda: DPMSolverScheduler(algo="dpm-solver"), "algo: 'dpm-solver'")
    one_line_error(lambda: DPMSolverScheduler(algorithm_type="dpm-solver"), "algo: 'dpm-solver'")
    one_line_error(lambda: DPMSolverScheduler(compat="diffusers", algo="dpmsolver"), "final_sigma")
    one_line_error(lambda: DPMSolverScheduler(method="adaptive"), "adaptive")
    one_line_error(lambda: DPMSolverScheduler(use_karras_sigmas=True, use_beta_sigmas=True), "at most one")
    one_line_error(lambda: DPMSolverScheduler().set_timesteps(0), "num_inference_steps: 0")


# ---------------------------------------------------------------- imports


def test_import_dpmcli_leaves_diffusers_unloaded():
    code = "import sys, dpmcli; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_diffusers_names_the_extra():
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "try:\n    import dpmcli.diffusers\nexcept ImportError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "dpmcli[diffusers]"' in out
