"""--compat diffusers on --process flow and --process edm reproduces diffusers' own schedulers.

Each case runs dpmcli and diffusers' scheduler (driven by a hand loop) on the same exact toy model
(``MixtureModel(gmm64())`` bound to the plan), from the same x_T and with the same SDE noise, and
compares every intermediate latent, not only the last. The difference at a step is
``max|ours - theirs| / max|theirs|`` over that step's latent, and each test bounds the worst step
(an rtol on that number). Two checks per case, as in test_diffusers_parity.py:

* step for step (``FORCED_RTOL`` = 1e-6): at every step both update diffusers' own latent with the
  same model output (dpmcli through ``DPMSolver.step``, the plan rows and ``solvers.step`` the loop
  runs). Observed at most 3e-7, a few float32 ulps: dpmcli evaluates diffusers' float32 step
  coefficients with numpy's float32 exp/log, diffusers with torch's, and the two differ by one ulp
  for some step sizes (e.g. exp(-h) on EDM's karras grid at steps 1-3); EDM's c_skip and c_out
  are float64 in dpmcli (from the float32 sigma), float32 in diffusers.
* free running: dpmcli's ``sample(plan, model, x)`` loop against the scheduler's own trajectory,
  float32. Flow within ``FLOW_FREE_RTOL`` = 1e-4 (observed 1.5e-5), EDM within ``EDM_FREE_RTOL`` =
  1e-3 (observed 6.4e-5 for dpmsolver++, 2.0e-4 for sde-dpmsolver++; x_T ~ 80). This is the
  per-step round-off above, amplified along the run by the mixture's sharp posteriors exactly as
  diffusers amplifies its own: diffusers against itself, with its latent moved by one float32 ulp
  after every step, differs by up to 1.0e-5 (flow), 1.1e-4 (EDM ODE) and 1.7e-4 (EDM SDE) on these
  cases. In float64 (x_T float64: diffusers' EDM scheduler keeps its float32 sigmas and step
  coefficients but does the tensor arithmetic in float64) the EDM runs agree far more tightly:
  ODE within ``EDM64_ODE_RTOL`` = 5e-6 (observed 7e-7, against 6.4e-5 in float32), SDE within
  ``EDM64_SDE_RTOL`` = 2e-5 (observed 2.7e-6, against 2.0e-4), the one-ulp coefficient differences
  being all that is left. So the float32 gap is round-off, not a different formula.

Cases: flow, DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
with flow_shift 1 and 3 and with use_dynamic_shifting (set_timesteps(n, mu=0.8) against
SolverConfig(flow_mu=0.8)), dpmsolver++ and sde-dpmsolver++ at orders 1-3; DPMSolverSinglestepScheduler
in flow mode at orders 1-3 (ODE); edm, EDMDPMSolverMultistepScheduler (sigma_schedule karras and
exponential, prediction_type epsilon and v_prediction), dpmsolver++ at orders 1-3 and
sde-dpmsolver++ at orders 1-2. Under flow the model is told diffusers' integer timestep t and
maps it to s = t / 1000, as a flow network does (so it sees a slightly different noise level than
the float32 sigma the update uses, on both sides alike); under EDM it is given
``scale_model_input(x, t)`` = c_in x and the c_noise timestep ln(sigma) / 4.

SDE noise: diffusers' schedulers draw ``randn(shape, generator=g, dtype)`` at every step (the last
one too, whose noise weight is 0); dpmcli's loop is handed a noise source that draws the same way
from its own generator with the same seed, so both see the same numbers as long as the last step
is the only one where dpmcli draws nothing (checked).

Quirks of diffusers met on the way (pinned below):
* flow timesteps are ``1000 s`` truncated to int64 (not rounded), the sigmas float32 of the
  untruncated s; dpmcli's compat grid keeps both (np.array_equal).
* a flow timestep repeats only with a shift: at 800 (and 1000) steps on 1000 training steps,
  flow_shift 1 repeats none; flow_shift 3 repeats 151 at 800 steps (the shift compresses the top
  of the grid: 999, 999, 998, 998, ...), mu = 0.8 repeats 91. The sigmas all still differ (no
  zero-length step), so dpmcli runs the grid, with a plan warning. diffusers' hand loop finds its
  start with ``index_for_timestep``, which takes the *second* match of a repeated first timestep:
  with flow_shift 3 it starts at step index 1, skips step 0 and fails with an IndexError at the
  last step; after ``set_begin_index(0)`` it runs and agrees with dpmcli.
* dpmcli's warning for those repeats counts the run of the first repeated timestep and says how
  many repeats follow ("timestep 999 is used by 2 consecutive steps ...; 150 more repeat(s) later").
* EDM: x_T's std is ``init_noise_sigma`` = sqrt(sigma_max^2 + 1) ~ 80 on both sides.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, EDMDPMSolverMultistepScheduler

from dpmcli import DPMSolver, SolverConfig, build_plan
from dpmcli.errors import ConfigError
from dpmcli.models import MixtureModel, gmm64
from dpmcli.sampler import sample

BATCH = 8
STEPS = 10
SINGLESTEP_STEPS = 12
NOISE_SEED = 1

FORCED_RTOL = 1e-6  # step for step, from diffusers' state: a few float32 ulps
FLOW_FREE_RTOL = 1e-4  # free running, float32: round-off amplified along the run
EDM_FREE_RTOL = 1e-3  # (x_T ~ 80)
EDM64_ODE_RTOL = 5e-6  # free running, float64
EDM64_SDE_RTOL = 2e-5

MIXTURE = gmm64()

# the flow grids: (dpmcli options, diffusers constructor options, set_timesteps options)
FLOW_SHIFTS = {
    "shift1": ({"flow_shift": 1.0}, {"flow_shift": 1.0}, {}),
    "shift3": ({"flow_shift": 3.0}, {"flow_shift": 3.0}, {}),
    "mu0.8": ({"flow_mu": 0.8}, {"use_dynamic_shifting": True}, {"mu": 0.8}),
}
EDM_SOLVERS = [("dpmsolver++", 1), ("dpmsolver++", 2), ("dpmsolver++", 3), ("sde-dpmsolver++", 1), ("sde-dpmsolver++", 2)]


# ------------------------------------------------------------------------------------ helpers


class Replay:
    """dpmcli's noise source drawing as diffusers' randn_tensor does: one randn per SDE step."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, step: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype) * scale


class Recorder:
    """The model, keeping the timestep it was told at each call."""

    def __init__(self, model):
        self.model, self.told = model, []

    def __call__(self, x, t):
        self.told.append(float(t))
        return self.model(x, t)


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    ours, theirs = ours.double(), theirs.double()
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def worst_step(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert len(ours) == len(theirs)
    return max(relative(a, b) for a, b in zip(ours, theirs))


def initial(std: float = 1.0, dtype=torch.float32, batch: int = BATCH) -> torch.Tensor:
    x = torch.randn(batch, MIXTURE.dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (x * std).to(dtype)


def run_ours(options: dict, x_T: torch.Tensor):
    """dpmcli's loop: (plan, bound model, the timesteps it told the model, every latent after each step)."""
    cfg = SolverConfig(**options)
    plan = build_plan(cfg)
    model = MixtureModel(MIXTURE).bind(plan)
    recorder = Recorder(model)
    latents: list[torch.Tensor] = []
    noise = None
    if cfg.is_sde:
        # the noise streams stay aligned only if dpmcli skips no draw but the last one
        assert [row.c == 0.0 for row in plan.rows] == [False] * (len(plan.rows) - 1) + [True]
        noise = Replay(NOISE_SEED)
    result = sample(plan, recorder, x_T.clone(), noise=noise, callbacks=(lambda e: latents.append(e.x_next.clone()),))
    assert torch.equal(result.samples, latents[-1])
    return plan, model, recorder.told, latents


def run_theirs(scheduler, model, x_T: torch.Tensor, sde: bool):
    """diffusers' scheduler in a hand loop: (the timesteps it told the model, every latent after each step)."""
    generator = torch.Generator().manual_seed(NOISE_SEED) if sde else None
    recorder = Recorder(model)
    x, latents = x_T.clone(), []
    for t in scheduler.timesteps:
        out = recorder(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
        latents.append(x)
    return recorder.told, latents


def step_for_step(options: dict, scheduler, model, x_T: torch.Tensor, sde: bool) -> float:
    """Worst step when both update diffusers' own latent (and history) with the same output and noise."""
    ours = DPMSolver(**options)
    assert np.array_equal(scheduler.timesteps.double().numpy(), np.asarray(ours.timesteps, dtype=np.float64))
    theirs_rng, ours_rng = torch.Generator().manual_seed(NOISE_SEED), torch.Generator().manual_seed(NOISE_SEED)
    x, worst = x_T.clone(), 0.0
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        z = torch.randn(x.shape, generator=ours_rng, dtype=x.dtype) if sde else None
        expected = scheduler.step(out, t, x, generator=theirs_rng).prev_sample
        got = ours.step(out, t, x, noise=z)
        worst = max(worst, relative(got, expected))
        x = expected
    return worst


def assert_same_grid(scheduler, plan):
    """Identical timesteps (as the model is told them) and float32 sigmas."""
    assert np.array_equal(scheduler.timesteps.double().numpy(), np.asarray(plan.timesteps, dtype=np.float64))
    assert scheduler.sigmas.dtype == torch.float32
    assert np.array_equal(scheduler.sigmas.double().numpy(), np.asarray(plan.sigmas, dtype=np.float64))


def compare(options: dict, make_scheduler, x_T: torch.Tensor) -> tuple[float, float]:
    """(worst step step for step, worst step free running) of one case; grids and timesteps told identical."""
    plan, model, told, ours = run_ours(options, x_T)
    sde = plan.config.is_sde
    scheduler = make_scheduler()
    assert_same_grid(scheduler, plan)
    if hasattr(scheduler, "order_list"):  # singlestep: the same order per grid point
        assert list(scheduler.order_list) == list(plan.orders)
    theirs_told, theirs = run_theirs(scheduler, model, x_T, sde)
    assert told == theirs_told
    assert ours[-1].dtype == theirs[-1].dtype == x_T.dtype
    return step_for_step(options, make_scheduler(), model, x_T, sde), worst_step(ours, theirs)


# ----------------------------------------------------------------------------------------- flow


def flow_options(shift: str, **options) -> dict:
    return dict(process="flow", prediction_type="flow_prediction", compat="diffusers", **FLOW_SHIFTS[shift][0], **options)


def flow_scheduler(kind, shift: str, steps: int, **options):
    _, theirs, at = FLOW_SHIFTS[shift]
    scheduler = kind(use_flow_sigmas=True, prediction_type="flow_prediction", **theirs, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singlestep: "lower_order_final set to True" for a zero final sigma
        scheduler.set_timesteps(steps, **at)
    return scheduler


@pytest.mark.parametrize("shift", sorted(FLOW_SHIFTS))
@pytest.mark.parametrize("algo", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_flow_multistep_matches_diffusers(shift, algo, order):
    """Flow, DPMSolverMultistepScheduler: same grid and integer timesteps; step for step 1e-6, free running 1e-4."""
    options = flow_options(shift, algo=algo, order=order, steps=STEPS)
    forced, free = compare(
        options, lambda: flow_scheduler(DPMSolverMultistepScheduler, shift, STEPS, algorithm_type=algo, solver_order=order), initial()
    )
    assert forced <= FORCED_RTOL and free <= FLOW_FREE_RTOL, (shift, algo, order, forced, free)


@pytest.mark.parametrize("shift", sorted(FLOW_SHIFTS))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_flow_singlestep_matches_diffusers(shift, order):
    """Flow, DPMSolverSinglestepScheduler (ODE): same grid and order list; step for step 1e-6, free running 1e-4."""
    options = flow_options(shift, order=order, steps=SINGLESTEP_STEPS, method="singlestep")
    forced, free = compare(options, lambda: flow_scheduler(DPMSolverSinglestepScheduler, shift, SINGLESTEP_STEPS, solver_order=order), initial())
    assert forced <= FORCED_RTOL and free <= FLOW_FREE_RTOL, (shift, order, forced, free)


def test_flow_timesteps_are_truncated_not_rounded():
    """diffusers' flow timesteps are int64(1000 s), its sigmas float32(s), then 0: dpmcli's compat grid is the same."""
    for shift in sorted(FLOW_SHIFTS):
        plan = build_plan(SolverConfig(**flow_options(shift, steps=STEPS)))
        scheduler = flow_scheduler(DPMSolverMultistepScheduler, shift, STEPS)
        assert_same_grid(scheduler, plan)
        assert scheduler.timesteps.dtype == torch.int64 and plan.sigmas[-1] == 0.0
        # t = floor(1000 s): 1000 s (s the float32 sigma; 1e-4 for its rounding) lies in [t, t + 1)
        scaled = 1000.0 * np.asarray(plan.sigmas[:-1])
        assert np.all((plan.timesteps <= scaled + 1e-4) & (scaled < plan.timesteps + 1.0 + 1e-4)), shift
    # truncated, not rounded: with shift 3 some 1000 s has a fraction above one half
    shifted = build_plan(SolverConfig(**flow_options("shift3", steps=STEPS)))
    assert np.any(np.round(1000.0 * np.asarray(shifted.sigmas[:-1])) != shifted.timesteps)


def _runs(timesteps) -> dict[float, int]:
    """How many steps each repeated timestep is used by (the grid is decreasing, so they are consecutive)."""
    values, counts = np.unique(np.asarray(timesteps), return_counts=True)
    return {float(v): int(c) for v, c in zip(values, counts) if c > 1}


def test_flow_800_steps_repeats_timesteps_only_when_shifted():
    """At 800 steps on 1000 training steps: flow_shift 1 repeats no timestep, flow_shift 3 repeats 151, mu 0.8 91.

    The sigmas still all differ (no zero-length step): dpmcli runs the grid with a warning. A plain
    diffusers hand loop starts at the second occurrence of a repeated first timestep (its
    index_for_timestep) and runs out of sigmas at the end; started at index 0 it agrees with dpmcli.
    """
    steps = 800
    plain = build_plan(SolverConfig(**flow_options("shift1", steps=steps)))
    assert_same_grid(flow_scheduler(DPMSolverMultistepScheduler, "shift1", steps), plain)
    assert not _runs(plain.timesteps) and not plain.warnings

    dynamic = build_plan(SolverConfig(**flow_options("mu0.8", steps=steps)))
    assert_same_grid(flow_scheduler(DPMSolverMultistepScheduler, "mu0.8", steps), dynamic)
    t = np.asarray(dynamic.timesteps)
    assert int(np.sum(t[1:] == t[:-1])) == 91 and t[0] != t[1]

    plan = build_plan(SolverConfig(**flow_options("shift3", order=2, steps=steps)))
    scheduler = flow_scheduler(DPMSolverMultistepScheduler, "shift3", steps, solver_order=2)
    assert_same_grid(scheduler, plan)
    t = np.asarray(plan.timesteps)
    assert int(np.sum(t[1:] == t[:-1])) == 151 and t[0] == t[1] == 999 and _runs(t)[999.0] == 2
    sig = np.asarray(plan.sigmas)
    assert np.all(sig[1:] < sig[:-1])  # no zero-length step
    assert all(row.failure is None for row in plan.rows)
    assert any("same timestep" in w for w in plan.warnings), plan.warnings

    small = initial(batch=2)
    model = MixtureModel(MIXTURE).bind(plan)
    x = small.clone()
    with pytest.raises(IndexError):
        for t_ in scheduler.timesteps:
            x = scheduler.step(model(x, t_), t_, x).prev_sample
    assert scheduler.step_index == steps  # started at index 1: one step ahead when it ran out of sigmas

    scheduler = flow_scheduler(DPMSolverMultistepScheduler, "shift3", steps, solver_order=2)
    scheduler.set_begin_index(0)
    _, theirs = run_theirs(scheduler, model, small, sde=False)
    latents: list[torch.Tensor] = []
    sample(plan, model, small.clone(), callbacks=(lambda e: latents.append(e.x_next.clone()),))
    assert worst_step(latents, theirs) <= FLOW_FREE_RTOL


def test_flow_repeat_warning_counts_the_run_it_names():
    """'timestep T is used by K consecutive steps' should count T's own steps.

    At 800 steps and shift 3, 999 is used by 2 steps, and 150 more repeats follow (998, 997, ...).
    """
    plan = build_plan(SolverConfig(**flow_options("shift3", steps=800)))
    runs = _runs(plan.timesteps)
    found = [re.search(r"timestep (\S+) is used by (\d+) consecutive steps", w) for w in plan.warnings]
    for match in filter(None, found):
        assert runs[float(match.group(1))] == int(match.group(2)), match.group(0)


# ------------------------------------------------------------------------------------------ edm


def edm_options(spacing, prediction, algo, order) -> dict:
    return dict(process="edm", spacing=spacing, prediction_type=prediction, algo=algo, order=order, steps=STEPS, compat="diffusers")


def edm_scheduler(spacing, prediction, algo, order):
    scheduler = EDMDPMSolverMultistepScheduler(sigma_schedule=spacing, prediction_type=prediction, algorithm_type=algo, solver_order=order)
    scheduler.set_timesteps(STEPS)
    return scheduler


def edm_case(spacing, prediction, algo, order, dtype) -> tuple[float, float]:
    options = edm_options(spacing, prediction, algo, order)
    std = build_plan(SolverConfig(**options)).schedule.init_noise_sigma
    assert std == edm_scheduler(spacing, prediction, algo, order).init_noise_sigma
    return compare(options, lambda: edm_scheduler(spacing, prediction, algo, order), initial(std, dtype))


@pytest.mark.parametrize("spacing", ["karras", "exponential"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("algo, order", EDM_SOLVERS)
def test_edm_matches_diffusers(spacing, prediction, algo, order):
    """EDM, float32: same sigmas and c_noise timesteps; step for step 1e-6, free running 1e-3 (x_T ~ 80)."""
    forced, free = edm_case(spacing, prediction, algo, order, torch.float32)
    assert forced <= FORCED_RTOL and free <= EDM_FREE_RTOL, (spacing, prediction, algo, order, forced, free)


@pytest.mark.parametrize("spacing", ["karras", "exponential"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_float64_agrees_far_more_tightly(spacing, prediction):
    """EDM in float64: free running within 5e-6 (ODE) and 2e-5 (SDE): the float32 gap is round-off."""
    for algo, order in EDM_SOLVERS:
        forced, free = edm_case(spacing, prediction, algo, order, torch.float64)
        bound = EDM64_SDE_RTOL if algo.startswith("sde") else EDM64_ODE_RTOL
        assert forced <= FORCED_RTOL and free <= bound, (spacing, prediction, algo, order, forced, free)


def test_edm_grid_and_initial_noise():
    """Sigmas identical (float32 ramp, then 0 or sigma_min), c_noise timesteps, x_T std sqrt(sigma_max^2 + 1)."""
    for spacing in ("karras", "exponential"):
        for final in ("zero", "sigma-min"):
            cfg = SolverConfig(process="edm", spacing=spacing, steps=STEPS, final_sigma=final, compat="diffusers")
            scheduler = EDMDPMSolverMultistepScheduler(sigma_schedule=spacing, final_sigmas_type=final.replace("-", "_"))
            scheduler.set_timesteps(STEPS)
            plan = build_plan(cfg)
            assert_same_grid(scheduler, plan)
            assert plan.sigmas[-1] == (0.0 if final == "zero" else float(np.float32(cfg.sigma_min)))
            assert np.array_equal(plan.timesteps, (0.25 * torch.log(scheduler.sigmas[:-1])).double().numpy())
            assert plan.schedule.init_noise_sigma == scheduler.init_noise_sigma == (80.0**2 + 1) ** 0.5


# ------------------------------------------------------------------------------------ refusals

REFUSED = [
    ({"process": "flow", "prediction_type": "flow_prediction", "spacing": "karras"}, r"--compat diffusers: diffusers' flow mode has one grid"),
    ({"process": "flow", "prediction_type": "flow_prediction", "final_sigma": "sigma-min"}, r"--compat diffusers: .*use --final-sigma zero$"),
    ({"process": "flow", "prediction_type": "v_prediction"}, r"--compat diffusers: diffusers' flow mode converts v_prediction"),
    ({"process": "edm", "spacing": "karras", "method": "singlestep"}, r"--compat diffusers: EDMDPMSolverMultistepScheduler is multistep only"),
    ({"process": "edm", "spacing": "karras", "algo": "dpmsolver"}, r"--compat diffusers: EDMDPMSolverMultistepScheduler has no --algo dpmsolver"),
    ({"process": "edm", "spacing": "karras", "algo": "sde-dpmsolver++", "order": 3},
     r"--compat diffusers: EDMDPMSolverMultistepScheduler has no third-order sde-dpmsolver\+\+"),
]


@pytest.mark.parametrize("options, message", REFUSED, ids=["flow-karras", "flow-sigma-min", "flow-v", "edm-singlestep", "edm-dpmsolver", "edm-sde-3"])
def test_compat_refusals_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as caught:
        build_plan(SolverConfig(steps=STEPS, compat="diffusers", **options))
    text = str(caught.value)
    assert "\n" not in text and re.match(message, text), text
