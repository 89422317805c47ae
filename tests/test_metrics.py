"""Sample-quality metrics against Monte Carlo, numerical integration and constructed cases."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import dblquad, quad

from dpmcli.metrics import (
    BANDWIDTH_RULE,
    default_bandwidth,
    kernel_mean,
    kernel_self_mean,
    log_likelihood_gap,
    median_bandwidth,
    mmd2_to_mixture,
    mode_flips,
)
from dpmcli.models import gmm64, ring
from dpmcli.models.mixture import GaussianMixture
from dpmcli.stats import mixture_summary

MIX_1D = GaussianMixture("1d", np.array([0.3, 0.7]), np.array([[-1.0], [0.8]]), np.array([[0.3], [0.5]]))
MIX_2D = GaussianMixture(
    "2d",
    np.array([0.2, 0.5, 0.3]),
    np.array([[-1.0, 0.5], [0.7, -0.2], [0.1, 1.3]]),
    np.array([[0.15, 0.6], [0.4, 0.1], [0.3, 0.25]]),
)


def _random_3d() -> GaussianMixture:
    rng = np.random.default_rng(7)
    weights = rng.uniform(0.5, 1.5, 4)
    return GaussianMixture("3d", weights / weights.sum(), rng.normal(0, 1.5, (4, 3)), rng.uniform(0.05, 0.8, (4, 3)))


def _kernel(x, y, bandwidth):
    return torch.exp(-((x - y) ** 2).sum(-1) / (2 * bandwidth**2))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mixture_of(a: GaussianMixture, b: GaussianMixture) -> GaussianMixture:
    """The equal-weight mixture 0.5 a + 0.5 b."""
    return GaussianMixture(
        "ab",
        np.concatenate([0.5 * a.weights, 0.5 * b.weights]),
        np.concatenate([a.means, b.means]),
        np.concatenate([a.stds, b.stds]),
    )


def _exact_mmd2(q: GaussianMixture, p: GaussianMixture, bandwidth: float) -> float:
    """MMD^2(q, p) between two mixtures, from E[k] over 0.5 q + 0.5 p: E_qp = 2 E_mm - E_qq / 2 - E_pp / 2."""
    qq, pp = kernel_self_mean(q, bandwidth), kernel_self_mean(p, bandwidth)
    qp = 2 * kernel_self_mean(_mixture_of(q, p), bandwidth) - 0.5 * qq - 0.5 * pp
    return qq - 2 * qp + pp


# --- closed forms against Monte Carlo -------------------------------------------------------


@pytest.mark.parametrize("mixture", [ring(), _random_3d()], ids=["ring", "random3d"])
@pytest.mark.parametrize("bandwidth", [None, 1.5])
def test_kernel_terms_match_monte_carlo(mixture, bandwidth):
    bandwidth = bandwidth or default_bandwidth(mixture)
    draws = 200_000
    y = mixture.sample(draws, _gen(1))
    y2 = mixture.sample(draws, _gen(2))
    # Points at modes, between modes and far out, in float64.
    points = torch.cat(
        [mixture.sample(3, _gen(3)), torch.tensor(mixture.means[:2]) + 0.3, torch.zeros(1, mixture.dims)]
    )
    exact = kernel_mean(points, mixture, bandwidth)
    for i, x in enumerate(points):
        k = _kernel(x, y, bandwidth)
        se = k.std().item() / math.sqrt(draws)
        assert abs(exact[i].item() - k.mean().item()) < 5 * se + 1e-12, (i, exact[i].item(), k.mean().item(), se)
    k = _kernel(y, y2, bandwidth)
    se = k.std().item() / math.sqrt(draws)
    assert abs(kernel_self_mean(mixture, bandwidth) - k.mean().item()) < 5 * se


# --- closed forms against numerical integration ---------------------------------------------


def _density_1d(y):
    return sum(
        w * math.exp(-0.5 * ((y - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        for w, m, s in zip(MIX_1D.weights, MIX_1D.means[:, 0], MIX_1D.stds[:, 0])
    )


@pytest.mark.parametrize("bandwidth", [0.2, 1.0, 3.0])
def test_kernel_terms_match_quadrature_1d(bandwidth):
    k = lambda x, y: math.exp(-((x - y) ** 2) / (2 * bandwidth**2))
    xs = [-2.5, -1.0, 0.0, 0.8, 4.0]
    exact = kernel_mean(torch.tensor(xs, dtype=torch.float64)[:, None], MIX_1D, bandwidth)
    for x, e in zip(xs, exact.tolist()):
        num, _ = quad(lambda y: k(x, y) * _density_1d(y), -12, 12, epsabs=1e-14, epsrel=1e-12, limit=200)
        assert e == pytest.approx(num, rel=1e-8, abs=1e-13)
    # E[k(Y, Y')] = int p(y) E[k(y, Y')] dy, with the inner integral by quadrature as well.
    inner = lambda y: quad(lambda y2: k(y, y2) * _density_1d(y2), -12, 12, epsabs=1e-14, limit=200)[0]
    num, _ = quad(lambda y: _density_1d(y) * inner(y), -12, 12, epsabs=1e-13, limit=200)
    assert kernel_self_mean(MIX_1D, bandwidth) == pytest.approx(num, rel=1e-7)


def test_kernel_mean_matches_quadrature_2d_unequal_stds():
    bandwidth = 0.5

    def density(y1, y2):
        total = 0.0
        for w, m, s in zip(MIX_2D.weights, MIX_2D.means, MIX_2D.stds):
            z = ((y1 - m[0]) / s[0]) ** 2 + ((y2 - m[1]) / s[1]) ** 2
            total += w * math.exp(-0.5 * z) / (2 * math.pi * s[0] * s[1])
        return total

    xs = [(0.0, 0.0), (-1.0, 0.9), (0.6, -0.3)]
    exact = kernel_mean(torch.tensor(xs, dtype=torch.float64), MIX_2D, bandwidth)
    for (a, b), e in zip(xs, exact.tolist()):
        f = lambda y2, y1: math.exp(-((a - y1) ** 2 + (b - y2) ** 2) / (2 * bandwidth**2)) * density(y1, y2)
        num, _ = dblquad(f, -5, 5, -5, 5, epsabs=1e-11, epsrel=1e-9)
        assert e == pytest.approx(num, rel=1e-7)


# --- the estimator --------------------------------------------------------------------------


def test_mmd2_equals_brute_force_u_statistic_and_chunking_does_not_matter():
    mixture, bandwidth = _random_3d(), 0.7
    x = mixture.sample(37, _gen(5)) * 1.1
    gram = _kernel(x[:, None, :], x[None, :, :], bandwidth)
    n = x.shape[0]
    pair_mean = (gram.sum() - gram.diagonal().sum()).item() / (n * (n - 1))
    result = mmd2_to_mixture(x, mixture, bandwidth)
    assert result["sample_sample"] == pytest.approx(pair_mean, rel=1e-12)
    assert result["mmd2"] == pytest.approx(
        result["sample_sample"] - 2 * result["sample_target"] + result["target_target"], rel=1e-12, abs=1e-15
    )
    assert {"mmd2", "bandwidth", "bandwidth_rule", "n", "sample_sample", "sample_target", "target_target"} <= set(
        result
    )
    assert result["n"] == n and result["bandwidth"] == bandwidth and result["bandwidth_rule"] == "given"
    chunked = mmd2_to_mixture(x.float(), mixture, bandwidth, chunk=5)
    assert chunked["mmd2"] == pytest.approx(mmd2_to_mixture(x.float(), mixture, bandwidth)["mmd2"], rel=1e-10)


@pytest.mark.parametrize("mixture", [ring(), gmm64()], ids=["ring", "gmm64"])
def test_mmd2_of_exact_samples_is_centred_on_zero_and_other_distributions_are_far(mixture):
    bandwidth = default_bandwidth(mixture)
    n, seeds = 600, 30
    null = np.array(
        [mmd2_to_mixture(mixture.sample(n, _gen(100 + s)), mixture, bandwidth)["mmd2"] for s in range(seeds)]
    )
    spread = null.std(ddof=1)
    assert abs(null.mean()) < 4 * spread / math.sqrt(seeds), (null.mean(), spread)
    assert (null < 0).any() and (null > 0).any()
    # Wider modes (std doubled) and modes shifted by one std: positive, far outside the null
    # spread, and on average equal to the exact MMD^2 between the two mixtures.
    wider = GaussianMixture("wider", mixture.weights, mixture.means, 2 * mixture.stds)
    shifted = GaussianMixture("shifted", mixture.weights, mixture.means + mixture.stds.mean(), mixture.stds)
    for other in (wider, shifted):
        values = np.array(
            [mmd2_to_mixture(other.sample(n, _gen(200 + s)), mixture, bandwidth)["mmd2"] for s in range(10)]
        )
        exact = _exact_mmd2(other, mixture, bandwidth)
        assert values.min() > 10 * spread, (other.name, values.min(), spread)
        assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / math.sqrt(len(values)), (values.mean(), exact)


def test_mmd2_of_standard_normal_against_ring_is_clearly_positive():
    mixture = ring()
    null = [mmd2_to_mixture(mixture.sample(500, _gen(s)), mixture)["mmd2"] for s in range(10)]
    result = mmd2_to_mixture(torch.randn(500, 2, generator=_gen(99), dtype=torch.float64), mixture)
    assert result["mmd2"] > 20 * np.std(null)
    assert result["bandwidth_rule"] == BANDWIDTH_RULE


def test_bandwidths_are_deterministic_and_positive():
    for build in (ring, gmm64, _random_3d):
        for rule in (default_bandwidth, median_bandwidth):
            first, second = rule(build()), rule(build())
            assert first == second and first > 0 and math.isfinite(first)
    # Default: RMS distance between two draws of one component, sqrt(2 * 2 * 0.1^2) on the ring;
    # checked against pairs drawn from the same component.
    assert default_bandwidth(ring()) == pytest.approx(0.2, rel=1e-12)
    mixture = gmm64()
    k = torch.multinomial(torch.tensor(mixture.weights), 100_000, replacement=True, generator=_gen(4))
    s = torch.tensor(mixture.stds)[k]
    pair = s * torch.randn(len(k), mixture.dims, generator=_gen(5), dtype=torch.float64) - s * torch.randn(
        len(k), mixture.dims, generator=_gen(6), dtype=torch.float64
    )
    assert default_bandwidth(mixture) == pytest.approx((pair**2).sum(1).mean().sqrt().item(), rel=0.01)
    # The median heuristic on the ring is about the chord between modes a quarter turn apart.
    assert median_bandwidth(ring()) == pytest.approx(math.sqrt(2), rel=0.05)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        mmd2_to_mixture(torch.zeros(10, 3), ring(), 1.0)
    with pytest.raises(ValueError):
        mmd2_to_mixture(torch.zeros(10, 2), ring(), 0.0)
    with pytest.raises(ValueError):
        mode_flips(torch.zeros(10, 2), torch.zeros(9, 2), ring())


# --- mode flips and log-likelihood ----------------------------------------------------------


def _rotate(x, turns):
    angle = 2 * math.pi * turns
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=x.dtype)
    return x @ rot.T


def test_mode_flips_on_constructed_cases():
    mixture = ring()
    x = mixture.sample(400, _gen(11))
    assert mode_flips(x, x, mixture) == 0.0
    changed = (mixture.component_of(x + 0.01) != mixture.component_of(x)).double().mean().item()
    assert mode_flips(x + 0.01, x, mixture) == pytest.approx(changed)
    # Points near the modes, moved one mode (1/8 turn) round the ring: every one flips.
    noise = 0.02 * torch.randn(400, 2, generator=_gen(12), dtype=torch.float64)
    near = torch.tensor(mixture.means).repeat(50, 1) + noise
    moved = _rotate(near, 1 / 8)
    assert mode_flips(moved, near, mixture) == 1.0
    # A known share moved, in float32, and a full turn (back to the same modes) flips nothing.
    part = near.clone()
    part[:150] = moved[:150]
    assert mode_flips(part.float(), near, mixture) == pytest.approx(150 / 400)
    assert mode_flips(_rotate(near, 1.0), near, mixture) == 0.0


def test_log_likelihood_gap():
    mixture = ring()
    exact = log_likelihood_gap(mixture.sample(20_000, _gen(21)), mixture, reference_count=50_000, seed=3)
    assert abs(exact["gap"]) < 4 * exact["gap_stderr"]
    assert exact["gap"] == pytest.approx(exact["mean_log_likelihood"] - exact["expected_log_likelihood"])
    # The same reference estimate as mixture_summary.
    x = mixture.sample(1000, _gen(22))
    summary = mixture_summary(mixture, x)
    gap = log_likelihood_gap(x, mixture)
    assert gap["expected_log_likelihood"] == summary["expected_log_likelihood"]
    assert gap["expected_log_likelihood_stderr"] == summary["expected_log_likelihood_stderr"]
    assert gap["mean_log_likelihood"] == pytest.approx(summary["mean_log_likelihood"], rel=1e-12)
    # Collapsed onto the modes: too likely; spread out: not likely enough.
    collapsed = log_likelihood_gap(torch.tensor(mixture.means).repeat(10, 1), mixture)
    assert collapsed["gap"] > 10 * collapsed["expected_log_likelihood_stderr"] and collapsed["gap"] > 0.5
    spread = log_likelihood_gap(2 * x, mixture)
    assert spread["gap"] < -10 * spread["gap_stderr"]


def test_log_prob_chunked_is_one_log_prob_call_in_pieces():
    from dpmcli.stats import log_prob_chunked

    mixture = ring()
    x = mixture.sample(1001, _gen(23))
    whole = mixture.log_prob(x)
    for chunk in (1, 7, 1000, 1001, 8192):
        torch.testing.assert_close(log_prob_chunked(mixture, x, chunk=chunk), whole, rtol=0, atol=1e-12)  # float64
