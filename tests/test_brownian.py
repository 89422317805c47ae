"""The Brownian tree and the noise source built on it: exact path properties, statistics, and
strong convergence of SDE-DPM-Solver on one shared Brownian path."""

import math

import numpy as np
import pytest
import torch

from dpmcli.brownian import BrownianNoise, BrownianTree, schedule_lambda_range
from dpmcli.config import SolverConfig
from dpmcli.models import MixtureModel, ring
from dpmcli.noise import GaussianNoise, initial_latents
from dpmcli.plan import build_plan
from dpmcli.sampler import sample

SDE_ALGOS = ("sde-dpmsolver++", "sde-dpmsolver")
BIG = 20000  # components per draw in the statistical tests
SE_VAR = math.sqrt(2.0 / BIG)  # standard error of a sample variance of unit normals
SE_MEAN = 1.0 / math.sqrt(BIG)  # and of a sample mean / correlation


def plan_for(steps, algo="sde-dpmsolver++", spacing="logsnr", final_sigma="sigma-min", **options):
    cfg = SolverConfig(algo=algo, order=1, steps=steps, spacing=spacing, final_sigma=final_sigma,
                       lower_order_final=False, **options)
    return build_plan(cfg)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# -- the tree ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split, t0, t1", [("linear", 0.0, 1.0), ("linear", -3.0, 5.5), ("geometric", 1e-3, 1e3)])
def test_tree_values_do_not_depend_on_query_order(split, t0, t1):
    rng = np.random.default_rng(0)
    times = list(t0 + (t1 - t0) * rng.random(40)) + [t0, t1, t0 + (t1 - t0) / 2, t0 + (t1 - t0) / 4]
    if split == "geometric":
        times += list(np.exp(rng.uniform(math.log(t0), math.log(t1), 20)))
    first = BrownianTree(t0, t1, (3, 2), seed=11, split=split)
    values = {t: first(t) for t in times}
    # Another tree: reversed order, unrelated queries in between, and a cache so small it evicts.
    second = BrownianTree(t0, t1, (3, 2), seed=11, split=split, cache_bytes=0)
    for t in reversed(times):
        second(t0 + (t1 - t0) * rng.random())
        assert torch.equal(second(t), values[t]), t
    # Asking again (from the cache) gives the same answer, and the answer is a copy.
    again = first(times[0])
    assert torch.equal(again, values[times[0]])
    again.add_(1.0)
    assert torch.equal(first(times[0]), values[times[0]])
    assert torch.equal(first.increment(times[1], times[2]), values[times[2]] - values[times[1]])


def test_tree_ends_range_and_seed():
    tree = BrownianTree(2.0, 6.0, (BIG,), seed=5)
    assert torch.equal(tree(2.0), torch.zeros(BIG, dtype=torch.float64))
    end = tree(6.0)
    assert end.dtype == torch.float64 and end.device.type == "cpu"
    assert abs(float(end.var()) / 4.0 - 1.0) < 5 * SE_VAR
    assert abs(float(end.mean())) < 5 * SE_MEAN * 2.0
    for bad in (1.999, 6.0 + 1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            tree(bad)
    with pytest.raises(ValueError):
        tree.increment(3.0, 7.0)
    with pytest.raises(ValueError):
        BrownianTree(1.0, 1.0, (2,), seed=0)
    with pytest.raises(ValueError):
        BrownianTree(0.0, 1.0, (2,), seed=0, split="geometric")
    assert torch.equal(BrownianTree(2.0, 6.0, (BIG,), seed=5)(3.7), tree(3.7))
    assert not torch.equal(BrownianTree(2.0, 6.0, (BIG,), seed=6)(3.7), tree(3.7))


@pytest.mark.parametrize("split, t0, t1", [("linear", 0.0, 1.0), ("geometric", 1e-2, 1e3)])
def test_increments_have_the_interval_as_variance_and_are_independent(split, t0, t1):
    tree = BrownianTree(t0, t1, (BIG,), seed=21, split=split)
    span = t1 - t0
    # Non-dyadic points at many scales, adjacent and separated intervals, one far below the top levels.
    points = [t0 + span * f for f in (0.0, 0.1234567, 0.3, 0.30000123, 0.3000025, 0.61803, 0.9, 1.0)]
    points[-1] = t1
    if split == "geometric":
        points = [t0, 0.0123456, 0.0123459, 0.5, 0.5000002, 7.7, 123.4, t1]
    incs = [(tree.increment(a, b), b - a) for a, b in zip(points[:-1], points[1:])]
    for inc, length in incs:
        assert abs(float(inc.var()) / length - 1.0) < 5 * SE_VAR, length
        assert abs(float(inc.mean())) < 5 * SE_MEAN * math.sqrt(length)
    for i in range(len(incs)):
        for j in range(i + 1, len(incs)):
            assert abs(corr(incs[i][0], incs[j][0])) < 5 * SE_MEAN, (i, j)
    # Teeth: overlapping intervals are correlated as a Brownian motion says, overlap / sqrt(len1 len2).
    a, b, c = points[1], points[3], points[5]
    expected = (b - a) / math.sqrt((b - a) * (c - a))
    assert abs(corr(tree.increment(a, b), tree.increment(a, c)) - expected) < 5 * SE_MEAN


# -- the noise source ----------------------------------------------------------------------------


@pytest.mark.parametrize("algo", SDE_ALGOS)
def test_each_step_noise_is_standard_normal_and_independent(algo):
    plan = plan_for(20, algo)
    noise = BrownianNoise(0, plan, (BIG,))
    like = torch.zeros(BIG, dtype=torch.float64)
    zs = [noise(i, like, 1.0) for i in range(plan.steps)]
    for i, z in enumerate(zs):
        assert abs(float(z.mean())) < 5 * SE_MEAN, i
        assert abs(float(z.var()) - 1.0) < 5 * SE_VAR, i
    for i in range(plan.steps - 1):
        assert abs(corr(zs[i], zs[i + 1])) < 5 * SE_MEAN, i
    assert abs(corr(zs[0], zs[-1])) < 5 * SE_MEAN


@pytest.mark.parametrize("algo", SDE_ALGOS)
@pytest.mark.parametrize("factor", [2, 4])
def test_increments_of_a_finer_nested_grid_add_up(algo, factor):
    coarse_plan, fine_plan = plan_for(25, algo), plan_for(25 * factor, algo)
    np.testing.assert_array_equal(fine_plan.lambdas[::factor], coarse_plan.lambdas)  # the grids nest
    shape = (64, 2)
    like = torch.zeros(shape, dtype=torch.float64)
    # Built separately: the path depends on seed, schedule and form only, never on the grid.
    coarse, fine = BrownianNoise(7, coarse_plan, shape), BrownianNoise(7, fine_plan, shape)
    shared = BrownianNoise.for_plans(7, [coarse_plan, fine_plan], shape)
    assert shared[0].tree is shared[1].tree
    for i in range(coarse_plan.steps):
        want = coarse(i, like, math.sqrt(coarse.dtau(i)))
        got = sum(fine(j, like, math.sqrt(fine.dtau(j))) for j in range(factor * i, factor * (i + 1)))
        tol = 1e-12 * max(1.0, float(want.abs().max()))
        assert float((got - want).abs().max()) < tol, i
        assert torch.equal(shared[0](i, like, 1.0), coarse(i, like, 1.0))
        # dtau is tau_{i+1} - tau_i in the algorithm's time change.
        lam_s, lam_t = coarse_plan.lambdas[i], coarse_plan.lambdas[i + 1]
        tau = (lambda l: math.exp(2 * l)) if algo.endswith("++") else (lambda l: -math.exp(-2 * l))
        assert coarse.dtau(i) == pytest.approx(tau(lam_t) - tau(lam_s), rel=1e-12)
    # Any two grids with the same ends see the same total increment (the same path), nested or not.
    other_plan = plan_for(17, algo, spacing="karras")
    assert other_plan.lambdas[0] == coarse_plan.lambdas[0] and other_plan.lambdas[-1] == coarse_plan.lambdas[-1]
    other = BrownianNoise(7, other_plan, shape)
    total = sum(coarse.increment(i) for i in range(coarse_plan.steps))
    total_other = sum(other.increment(i) for i in range(other_plan.steps))
    assert float((total - total_other).abs().max()) < 1e-12 * max(1.0, float(total.abs().max()))
    assert torch.equal(other.tree(other.tree.t1), coarse.tree(coarse.tree.t1))


def test_source_is_deterministic_order_free_and_casts():
    plan = plan_for(12)
    shape = (8, 3)
    like = torch.zeros(shape, dtype=torch.float64)
    a = [BrownianNoise(3, plan, shape)(i, like, 1.0) for i in range(plan.steps)]
    backwards = BrownianNoise(3, plan, shape)
    b = [backwards(i, like, 1.0) for i in reversed(range(plan.steps))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = BrownianNoise(4, plan, shape)
    assert all(not torch.equal(x, c(i, like, 1.0)) for i, x in enumerate(a))
    # The seed stream is independent of x_T's and GaussianNoise's streams.
    assert not torch.equal(a[0].float(), GaussianNoise(3)(0, like.float(), 1.0))
    # scale multiplies; like's dtype (and device) is followed; shape must match.
    source = BrownianNoise(3, plan, shape)
    half = source(5, torch.zeros(shape, dtype=torch.float32), 0.5)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, (0.5 * a[5]).float())
    with pytest.raises(ValueError):
        source(0, torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError):
        source(plan.steps, like, 1.0)


def test_step_to_sigma_zero_takes_no_noise_and_the_sampler_never_asks():
    plan = plan_for(10, final_sigma="zero")
    assert math.isinf(plan.lambdas[-1])
    shape = (16, 2)
    noise = BrownianNoise(0, plan, shape)
    with pytest.raises(ValueError, match="no noise"):
        noise(plan.steps - 1, torch.zeros(shape, dtype=torch.float64), 1.0)
    model = MixtureModel(ring(), plan.schedule)
    out = sample(plan, model, initial_latents(0, shape, "cpu", torch.float64), noise=noise).samples
    assert bool(torch.isfinite(out).all())


def test_tree_range_comes_from_the_schedule():
    plan = plan_for(10)
    lo, hi = schedule_lambda_range(plan.schedule)
    assert lo < plan.schedule.lambdas.min() and hi > plan.schedule.lambdas.max()
    tree = BrownianNoise(0, plan, (2,)).tree
    assert tree.t0 == pytest.approx(math.exp(2 * lo)) and tree.t1 == pytest.approx(math.exp(2 * hi))
    noise_form = BrownianNoise(0, plan_for(10, "sde-dpmsolver"), (2,)).tree
    assert noise_form.t0 == pytest.approx(math.exp(-2 * hi)) and noise_form.t1 == pytest.approx(math.exp(-2 * lo))
    # Grids that stop short of the schedule's ends (sigma = 0 last, linspace) still read the same path.
    for short_plan in (plan_for(25, final_sigma="zero"), plan_for(25, spacing="linspace", final_sigma="zero")):
        short = BrownianNoise(0, short_plan, (2,))
        assert (short.tree.t0, short.tree.t1) == (tree.t0, tree.t1)
        for i in (0, 5, short_plan.steps - 2):
            want = tree.increment(float(short.times[i]), float(short.times[i + 1]))
            assert torch.equal(short.increment(i), want), i
    trees: dict = {}
    p1 = BrownianNoise.shared(0, plan_for(10), (2,), trees)
    p2 = BrownianNoise.shared(0, plan_for(30, spacing="karras"), (2,), trees)
    p3 = BrownianNoise.shared(0, plan_for(10, "sde-dpmsolver"), (2,), trees)
    assert p1.tree is p2.tree and p3.tree is not p1.tree and len(trees) == 2
    # An explicit range must cover the grid; a different range is a different path.
    with pytest.raises(ValueError, match="lambda_range"):
        BrownianNoise(0, plan, (2,), lambda_range=(lo + 1.0, hi))
    wide = BrownianNoise(0, plan, (2,), lambda_range=(lo - 1.0, hi + 1.0))
    assert not torch.equal(wide.increment(0), BrownianNoise(0, plan, (2,)).increment(0))
    # A custom grid at the very ends of the schedule stays inside the default range.
    sigmas = plan.schedule.sigmas
    ends = (float(sigmas[-1]), 1.0, float(sigmas[0]))
    custom = build_plan(SolverConfig(algo="sde-dpmsolver++", order=1, sigmas=ends))
    assert BrownianNoise(0, custom, (2,))(0, torch.zeros(2), 1.0).shape == (2,)
    with pytest.raises(ValueError):
        BrownianNoise(0, plan, (3,), tree=tree)


# -- strong convergence on one shared path ---------------------------------------------------------


@pytest.mark.parametrize("algo", SDE_ALGOS)
def test_sde_solutions_converge_strongly_on_one_brownian_path(algo):
    # train_steps=2000 lets the reference take 1600 steps; every run uses that same schedule.
    def plan(steps):
        return plan_for(steps, algo, train_steps=2000)

    shape = (256, 2)
    x_T = initial_latents(0, shape, "cpu", torch.float64)
    reference_plan = plan(1600)
    model = MixtureModel(ring(), reference_plan.schedule)
    reference = sample(reference_plan, model, x_T.clone(), noise=BrownianNoise(0, reference_plan, shape)).samples

    def error(samples):
        return float((samples - reference).norm(dim=1).median())

    steps = [25, 50, 100, 200]
    brownian, gaussian = [], []
    for n in steps:
        p = plan(n)
        brownian.append(error(sample(p, model, x_T.clone(), noise=BrownianNoise(0, p, shape)).samples))
        gaussian.append(error(sample(p, model, x_T.clone(), noise=GaussianNoise(n)).samples))
    slope = -np.polyfit(np.log(steps), np.log(brownian), 1)[0]
    # Measured: slope 1.03 (++) / 1.07 (noise form); errors 0.051 -> 0.0061 and 0.041 -> 0.0044.
    # The noise is additive, so first order converges strongly at order 1.
    assert all(b > a for a, b in zip(brownian[1:], brownian[:-1])), brownian
    assert 0.8 < slope < 1.4, (slope, brownian)
    assert brownian[-1] < 0.02, brownian
    # Teeth: independent noise per run does not converge to the reference path (errors ~1.4).
    assert min(gaussian) > 0.5 and max(gaussian) / min(gaussian) < 1.5, gaussian
    assert abs(np.polyfit(np.log(steps), np.log(gaussian), 1)[0]) < 0.2, gaussian
