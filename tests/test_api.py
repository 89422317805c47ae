"""The Python API and the loop: one update for both, injected noise, light imports."""

import subprocess
import sys

import pytest
import torch

from dpmcli import ConfigError, DPMSolver, SolverConfig, build_plan
from dpmcli.models import MixtureModel, ring
from dpmcli.noise import GaussianNoise
from dpmcli.sampler import sample
from dpmcli.solvers import START, scaled_noise, step, threshold


def api_run(solver, model, x):
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    return x


@pytest.mark.parametrize("algo", ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"])
def test_api_and_sampler_give_identical_results(algo):
    solver = DPMSolver(algo=algo, order=3, steps=12, seed=3)
    model = MixtureModel(ring(), solver.plan.schedule)
    x_T = solver.initial_latents((64, 2))
    by_api = api_run(solver, model, x_T.clone())
    by_loop = sample(solver.plan, model, x_T.clone(), noise=GaussianNoise(3)).samples
    assert torch.equal(by_api, by_loop)
    solver.reset()
    assert torch.equal(api_run(solver, model, x_T.clone()), by_api)  # same seed, same numbers


def test_injected_noise_replaces_the_seeded_draw():
    solver = DPMSolver(algo="sde-dpmsolver++", steps=6)
    model = MixtureModel(ring(), solver.plan.schedule)
    x = solver.initial_latents((16, 2))
    zeros = [torch.zeros_like(x) for _ in solver.timesteps]
    noisy = api_run(solver, model, x.clone())
    solver.reset()
    quiet = x.clone()
    for t, z in zip(solver.timesteps, zeros):
        quiet = solver.step(model(quiet, t), t, quiet, noise=z)
    assert not torch.equal(noisy, quiet)
    # With zero noise the SDE step is its drift alone: a deterministic function of x_T.
    solver.reset()
    again = x.clone()
    for t, z in zip(solver.timesteps, zeros):
        again = solver.step(model(again, t), t, again, noise=z)
    assert torch.equal(again, quiet)


def test_step_checks_timestep_and_count():
    solver = DPMSolver(steps=3)
    x = torch.zeros(2, 2)
    with pytest.raises(ConfigError, match="timestep"):
        solver.step(x, 123, x)
    for t in solver.timesteps:
        x = solver.step(torch.zeros_like(x), t, x)
    with pytest.raises(ConfigError, match="reset"):
        solver.step(x, solver.timesteps[0], x)
    with pytest.raises(ConfigError, match="unknown option"):
        DPMSolver(stepz=3)


def test_half_precision_latents_are_updated_in_float32():
    solver = DPMSolver(steps=8)
    model = MixtureModel(ring(), solver.plan.schedule)
    x32 = solver.initial_latents((32, 2))
    out32 = api_run(solver, model, x32.clone())
    solver.reset()
    out16 = api_run(solver, model, x32.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - out32).abs().max() < 0.05


def test_thresholding_clips_the_data_prediction():
    x0 = torch.tensor([[3.0, -0.5, 0.2, 0.1], [0.5, 0.4, -0.3, 0.2]])
    clipped = threshold(x0, 0.75, 2.0)
    # sample 0: s = 75% quantile of |x0| clamped to [1, 2]; sample 1: s = 1, plain clipping.
    s = min(max(torch.quantile(x0[0].abs(), 0.75).item(), 1.0), 2.0)
    torch.testing.assert_close(clipped[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(clipped[1], x0[1])
    plan = build_plan(SolverConfig(thresholding=True, sample_max_value=1.0, steps=5, prediction_type="sample"))
    big = torch.full((4, 2), 5.0)
    assert plan.rows[0].threshold_max == 1.0 and plan.rows[0].threshold_ratio == 0.995  # the numbers travel in the row
    x_next, state = step(plan.rows[0], torch.zeros(4, 2), big, START)
    assert state.history[0].abs().max() == 1.0  # the stored x0 was clipped to [-1, 1]


def test_plan_keeps_only_the_history_it_reads():
    plan = build_plan(SolverConfig(order=3, steps=10, lower_order_final=True))
    # orders 1,2,3,3,3,3,3,3,2,1: step 8 reads only step 7's output, step 9 reads none.
    assert [r.history_after for r in plan.rows] == [1, 2, 2, 2, 2, 2, 2, 1, 0, 0]
    first = build_plan(SolverConfig(order=1, steps=4))
    assert all(not r.keep for r in first.rows)


def test_importing_dpmcli_loads_no_cli_or_plotting_library():
    code = "import sys, dpmcli; dpmcli.DPMSolver(steps=3); print(sorted(m for m in ('typer', 'rich', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("options", [
    {"algo": "sde-dpmsolver++", "order": 3, "steps": 9},  # noise terms and a three-deep history
    {"method": "singlestep", "order": 3, "steps": 4},  # anchors: every stage starts from its step's latent
    {"order": 4, "startup": "singlestep", "coefficients": "exact", "steps": 8},  # start-up sweeps re-anchor at x_0
    {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "v_prediction", "steps": 6},
])
def test_a_run_stepped_by_hand_through_step_state_equals_the_loop(options):
    """StepState round trip: the state ``step`` returns is all a loop carries, bit for bit."""
    plan = build_plan(SolverConfig(**options))
    model = MixtureModel(ring(), plan.schedule)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(5))
    noise = GaussianNoise(7)
    x, state = x_T.clone(), START
    for row in plan.rows:
        x, state = step(row, x, model(x, plan.timestep_values[row.index]), state, scaled_noise(row, x, noise))
        assert len(state.history) == row.history_after
        if row.sets_anchor:
            assert state.anchor is not None
    looped = sample(plan, model, x_T.clone(), noise=GaussianNoise(7))
    assert torch.equal(x, looped.samples)
    assert looped.attempts is None and looped.accepted == looped.rejected == 0  # a planned run tries no steps


def test_the_anchor_comes_from_the_row_that_sets_it():
    plan = build_plan(SolverConfig(method="singlestep", order=2, steps=3))
    first, second = plan.rows[0], plan.rows[1]
    assert first.sets_anchor and not second.sets_anchor and second.anchor == first.index
    x, y = torch.ones(2, 2), torch.full((2, 2), 2.0)
    _, state = step(first, x, torch.zeros(2, 2))
    assert state.anchor is x
    _, after = step(second, y, torch.zeros(2, 2), state)
    assert after.anchor is x  # kept, not replaced by the stage's own input


def test_an_sde_row_without_a_noise_source_is_refused():
    row = build_plan(SolverConfig(algo="sde-dpmsolver++", steps=4)).rows[0]
    assert row.c != 0.0
    with pytest.raises(ValueError, match="noise source"):
        scaled_noise(row, torch.zeros(2, 2))
    z = torch.ones(2, 2)
    assert torch.equal(scaled_noise(row, z, z=z), z * row.c)
