"""Per-sample seeds: sample i's x_T and noise depend only on (seed, i), never on the batch size.

``noise.row_normals`` draws them: its statistics, its determinism, and that a row never depends on
the other rows drawn with it; then x_T, Gaussian and Brownian noise, and ``dpmcli sample`` end to end
(``--batch 4`` is exactly the first 4 rows of ``--batch 64``).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from dpmcli.brownian import BrownianNoise, BrownianTree
from dpmcli.cli.main import app
from dpmcli.config import SolverConfig
from dpmcli.errors import ConfigError
from dpmcli.noise import GaussianNoise, initial_latents, row_normals
from dpmcli.plan import build_plan

N = 100_000  # values in the statistical tests
SE = 1.0 / math.sqrt(N)  # standard error of a mean or a correlation of N unit normals


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# -- row_normals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, shape", [(200, (500,)), (N, ()), (1000, (1, 5, 20))])
def test_row_normals_are_standard_normal(rows, shape):
    z = row_normals(3, 0, range(rows), shape)
    assert z.shape == (rows, *shape) and z.dtype == torch.float64 and z.device.type == "cpu"
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 5 * SE
    assert abs(flat.var() - 1.0) < 5 * math.sqrt(2.0 / N)
    assert stats.kstest(flat, "norm").pvalue > 1e-4
    # Both halves of a Box-Muller pair (cos: even elements, sin: odd ones) are N(0, 1) on their own.
    if shape and math.prod(shape) > 1:
        per_row = z.reshape(rows, -1).numpy()
        assert stats.kstest(per_row[:, 0::2].ravel(), "norm").pvalue > 1e-4
        assert stats.kstest(per_row[:, 1::2].ravel(), "norm").pvalue > 1e-4
    # and the tails are there: P(|z| > 3) = 0.0027
    assert abs(np.mean(np.abs(flat) > 3.0) - 0.0027) < 5 * math.sqrt(0.0027 / N)


def test_neighbouring_rows_counters_streams_seeds_and_elements_are_uncorrelated():
    base = row_normals(0, 0, range(201), (500,))
    pairs = {
        "next row": (base[:-1], base[1:]),
        "next element": (base[:, :-1], base[:, 1:]),  # (within and across Box-Muller pairs)
        "next counter": (base, row_normals(0, 0, range(201), (500,), counter=1)),
        "next stream": (base, row_normals(0, 1, range(201), (500,))),
        "next seed": (base, row_normals(1, 0, range(201), (500,))),
        "counter 2**32": (base, row_normals(0, 0, range(201), (500,), counter=2**32)),
    }
    for name, (a, b) in pairs.items():
        assert abs(corr(a, b)) < 5 / math.sqrt(a.numel()), name
    # squares too: Box-Muller's radius is shared by a pair, but its two values stay independent
    even, odd = base[:, 0::2], base[:, 1::2]
    assert abs(corr(even**2, odd**2)) < 5 / math.sqrt(even.numel())


def test_row_normals_are_a_function_of_seed_stream_row_counter_and_element_only():
    whole = row_normals(7, 1, range(50), (3, 3), counter=5)
    assert torch.equal(whole, row_normals(7, 1, range(50), (3, 3), counter=5))  # deterministic
    # any subset of rows, in any order, one at a time or together: the same rows
    picked = [41, 0, 17, 17, 49]
    assert torch.equal(row_normals(7, 1, picked, (3, 3), counter=5), whole[picked])
    for r in (0, 13, 49):
        assert torch.equal(row_normals(7, 1, [r], (3, 3), counter=5)[0], whole[r])
        assert torch.equal(row_normals(7, 1, range(r, r + 1), (3, 3), counter=5)[0], whole[r])
    # the element index, not the shape, decides a value: the first 9 values of a longer row are these
    assert torch.equal(row_normals(7, 1, range(50), (20,), counter=5)[:, :9], whole.reshape(50, 9))
    assert not torch.equal(row_normals(7, 1, range(50), (3, 3), counter=6), whole)
    assert not torch.equal(row_normals(7, 2, range(50), (3, 3), counter=5), whole)
    assert not torch.equal(row_normals(8, 1, range(50), (3, 3), counter=5), whole)
    assert row_normals(7, 1, range(0), (4,)).shape == (0, 4)
    assert row_normals(7, 1, range(3), (0,)).shape == (3, 0)
    assert row_normals(7, 1, range(3), ()).shape == (3,)
    with pytest.raises(ValueError):
        row_normals(7, 1, [-1], (2,))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_seeds_are_refused_as_before(bad):
    with pytest.raises(ConfigError, match="--seed"):
        row_normals(bad, 0, range(2), (2,))
    with pytest.raises(ConfigError, match="--seed"):
        initial_latents(bad, (2, 2), "cpu", torch.float32)
    with pytest.raises(ConfigError, match="--seed"):
        GaussianNoise(bad)


# -- x_T and the noise sources ---------------------------------------------------------------------


def test_initial_latents_of_a_small_batch_are_the_first_rows_of_a_large_one():
    for shape in ((2,), (1, 8, 8), (3,)):
        big = initial_latents(5, (64, *shape), "cpu", torch.float64)
        assert torch.equal(initial_latents(5, (4, *shape), "cpu", torch.float64), big[:4])
        assert torch.equal(initial_latents(5, (4, *shape), "cpu", torch.float64, first_row=10), big[10:14])
        assert torch.equal(initial_latents(5, (4, *shape), "cpu", torch.float32), big[:4].float())
        assert torch.equal(initial_latents(5, (4, *shape), "cpu", torch.float64, 2.5), big[:4] * 2.5)
    assert not torch.equal(initial_latents(6, (4, 2), "cpu", torch.float64), initial_latents(5, (4, 2), "cpu", torch.float64))


def test_gaussian_noise_rows_do_not_depend_on_the_batch():
    small, big = GaussianNoise(9), GaussianNoise(9)
    like4, like64 = torch.empty(4, 1, 8, 8), torch.empty(64, 1, 8, 8)
    draws = []
    for step in range(6):
        a, b = small(step, like4, 0.7), big(step, like64, 0.7)
        assert a.dtype == torch.float32 and a.shape == like4.shape
        assert torch.equal(a, b[:4]), step
        draws.append(a)
    # the k-th draw is counter k of stream 1, so draws differ from step to step, and each is a new tensor
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[2], (0.7 * row_normals(9, 1, range(4), (1, 8, 8), counter=2)).float())
    assert not torch.equal(draws[0], initial_latents(9, (4, 1, 8, 8), "cpu", torch.float32))  # x_T's stream is another


@pytest.mark.parametrize("algo", ["sde-dpmsolver++", "sde-dpmsolver"])
def test_brownian_noise_rows_do_not_depend_on_the_batch(algo):
    plan = build_plan(SolverConfig(algo=algo, steps=10))
    small, big = BrownianNoise(3, plan, (4, 2)), BrownianNoise(3, plan, (64, 2))
    like4, like64 = torch.empty(4, 2, dtype=torch.float64), torch.empty(64, 2, dtype=torch.float64)
    steps = [s for s in range(len(plan.lambdas) - 1) if math.isfinite(plan.lambdas[s + 1])]
    for step in reversed(steps):  # any order: the path does not depend on it
        assert torch.equal(small(step, like4, 1.0), big(step, like64, 1.0)[:4]), step


def test_brownian_tree_rows_are_the_batch_and_a_vector_is_one_row_per_element():
    for shape_small, shape_big in (((4, 3), (64, 3)), ((4,), (64,))):
        small = BrownianTree(1e-3, 1e3, shape_small, seed=1, split="geometric")
        big = BrownianTree(1e-3, 1e3, shape_big, seed=1, split="geometric")
        for t in (2.5e-3, 0.7, 1e3, 123.4):
            assert torch.equal(small(t), big(t)[:4]), (shape_small, t)
    scalar = BrownianTree(0.0, 1.0, (), seed=1)
    assert scalar(0.5).shape == () and torch.equal(scalar(0.5), BrownianTree(0.0, 1.0, (1,), seed=1)(0.5)[0])


# -- end to end --------------------------------------------------------------------------------------

runner = CliRunner()


def sampled(tmp_path, batch, *args):
    out = tmp_path / f"x{batch}.npy"
    result = runner.invoke(app, ["sample", "--batch", str(batch), "--steps", "8", "-q", "--save", str(out), *map(str, args)])
    assert result.exit_code == 0, result.stderr
    return np.load(out)


@pytest.mark.parametrize("args", [
    ("--algo", "dpmsolver++"),
    ("--algo", "sde-dpmsolver++", "--noise", "gaussian"),
    ("--algo", "sde-dpmsolver++", "--noise", "brownian"),
    ("--model", "digits", "--algo", "sde-dpmsolver++", "--noise", "brownian"),
    ("--model", "digits", "--algo", "dpmsolver++", "--seed", "3"),
])
def test_sample_of_a_small_batch_is_the_first_rows_of_a_large_one(tmp_path, args):
    # (the mixture runs, 2 values a sample, fail with whole-batch draws; the digits runs, 64 values a sample,
    # also check that the network and its per-row class labels, i % 10, treat every row alike)
    small, big = sampled(tmp_path, 4, *args), sampled(tmp_path, 64, *args)
    assert small.shape[0] == 4 and big.shape[0] == 64 and np.all(np.isfinite(big))
    assert np.array_equal(small, big[:4])
