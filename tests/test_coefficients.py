"""The weight formulas against independent quadrature and against each other."""

import math

import pytest
from scipy.integrate import quad

from dpmcli.coefficients import (
    FORMS,
    conversion,
    difference_weights,
    differences_to_linear,
    exact_weights,
    kernel_moments,
    midpoint_weights,
    phi_functions,
)
from dpmcli.rows import Rule, update_weights


@pytest.mark.parametrize("z", [-40.0, -3.0, -1.0000001, -0.9999, -0.3, -1e-6, 0.0, 1e-7, 0.5, 0.99, 1.0, 2.5, 12.0])
def test_phi_functions_match_their_integral_definition(z):
    # phi_k(z) = 1/(k-1)! * integral_0^1 exp(z (1 - v)) v^(k-1) dv
    for k, value in enumerate(phi_functions(z, 5), start=1):
        integral, _ = quad(lambda v: math.exp(z * (1 - v)) * v ** (k - 1), 0.0, 1.0, epsabs=0, epsrel=1e-13)
        expected = integral / math.factorial(k - 1)
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_phi_is_continuous_across_the_series_switch():
    below = phi_functions(-0.999999999, 4)
    above = phi_functions(-1.000000001, 4)
    for b, a in zip(below, above):
        assert b == pytest.approx(a, rel=1e-8)


@pytest.mark.parametrize("algo", sorted(FORMS))
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("h", [1e-4, 0.05, 0.7, 2.3])
def test_lagrange_weights_equal_exact_difference_weights(algo, order, h):
    form = FORMS[algo]
    ratios = [0.8, 1.3][: order - 1]
    lagrange = exact_weights(form, h, 1.7, ratios)
    w0, w1, w2 = difference_weights(form, h, 1.7, order, "exact", "midpoint")
    r0 = ratios[0] if order > 1 else 1.0
    r1 = ratios[1] if order > 2 else 1.0
    differences = differences_to_linear(order, w0, w1, w2, r0, r1)
    scale = max(abs(v) for v in lagrange)
    for a, b in zip(lagrange, differences):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12 * scale)


@pytest.mark.parametrize("algo", sorted(FORMS))
def test_published_third_order_weight_is_half_the_exact_one(algo):
    form = FORMS[algo]
    for h in (0.01, 0.3, 1.5):
        exact = difference_weights(form, h, 1.0, 3, "exact", "midpoint")
        published = difference_weights(form, h, 1.0, 3, "published", "midpoint")
        assert published[0] == exact[0] and published[1] == exact[1]
        assert published[2] == pytest.approx(0.5 * exact[2], rel=1e-14)


def test_published_weights_are_the_papers_closed_forms():
    h = 0.37
    alpha_t, sigma_t = 0.6, 0.8
    # DPM-Solver++(3M): D2 weight alpha_t * ((e^-h - 1 + h)/h^2 - 1/2) with a minus sign in front.
    _, w1, w2 = difference_weights(FORMS["dpmsolver++"], h, alpha_t, 3, "published", "midpoint")
    assert w1 == pytest.approx(alpha_t * ((math.exp(-h) - 1) / h + 1), rel=1e-13)
    assert w2 == pytest.approx(-alpha_t * ((math.exp(-h) - 1 + h) / h**2 - 0.5), rel=1e-12)
    # Noise form: -sigma_t * ((e^h - 1 - h)/h^2 - 1/2).
    _, w1, w2 = difference_weights(FORMS["dpmsolver"], h, -sigma_t, 3, "published", "midpoint")
    assert w1 == pytest.approx(-sigma_t * ((math.exp(h) - 1) / h - 1), rel=1e-13)
    assert w2 == pytest.approx(-sigma_t * ((math.exp(h) - 1 - h) / h**2 - 0.5), rel=1e-12)
    # k-diffusion's DPM++ 3M SDE (eta = 1): phi_2 = 1 - (1 - e^-2h)/(2h), phi_3 = phi_2/(2h) - 1/2, weight -phi_3.
    _, w1, w2 = difference_weights(FORMS["sde-dpmsolver++"], h, 2 * alpha_t, 3, "published", "midpoint")
    phi2 = 1 - (1 - math.exp(-2 * h)) / (2 * h)
    assert w1 == pytest.approx(alpha_t * phi2, rel=1e-13)
    assert w2 == pytest.approx(-alpha_t * (phi2 / (2 * h) - 0.5), rel=1e-12)


def test_diffusers_sde_third_order_weight_is_off_by_alpha():
    """diffusers' D2 weight for sde-dpmsolver++ equals the published one minus alpha_t: O(1), not O(h)."""
    alpha_t = 0.6
    for h in (1e-3, 0.1, 0.9):
        _, _, published = difference_weights(FORMS["sde-dpmsolver++"], h, 2 * alpha_t, 3, "published", "midpoint")
        diffusers = alpha_t * ((1 - math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5)
        assert diffusers == pytest.approx(published - alpha_t, rel=1e-6, abs=1e-9)
    assert abs(published) < 0.5 * alpha_t
    _, _, small = difference_weights(FORMS["sde-dpmsolver++"], 1e-4, 2 * alpha_t, 3, "published", "midpoint")
    assert abs(small) < 1e-4  # the published weight vanishes with h


def test_kernel_moments_are_stable_for_tiny_steps():
    for kappa in (1.0, -1.0, 2.0):
        moments = kernel_moments(kappa, 1e-9, 4)
        for n, m in enumerate(moments):
            assert m == pytest.approx(1.0 / (n + 1), rel=1e-8)


@pytest.mark.parametrize("algo", sorted(FORMS))
def test_midpoint_weights_follow_their_nodes_in_either_order(algo):
    """Published DPM-Solver-2: W0 on m0 plus W0/2 on (m1 - m0)/r1, whichever node comes first."""
    form, h, scale = FORMS[algo], 0.4, 0.8
    w0 = difference_weights(form, h, scale, 1, "published", "midpoint")[0]
    inner, start = midpoint_weights(form, h, scale, [0.5, 0.0])
    assert inner == 0.5 * w0 / 0.5 and start == w0 - inner
    assert midpoint_weights(form, h, scale, [0.0, 0.5]) == [start, inner]
    # the rows' weights of a midpoint update are these, for the plan's and the controller's node order alike
    a, b, _ = update_weights(form, Rule.MIDPOINT, -1.0, -1.0 + h, [-1.0 + 0.5 * h, -1.0])
    _, reversed_b, _ = update_weights(form, Rule.MIDPOINT, -1.0, -1.0 + h, [-1.0, -1.0 + 0.5 * h])
    assert b == tuple(reversed(reversed_b)) and math.isfinite(a)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_conversion_turns_every_prediction_into_x0_and_eps(prediction):
    alpha, sigma = 0.6, 0.8
    x0, eps = 1.5, -0.25
    x = alpha * x0 + sigma * eps
    out = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[prediction]
    p, q = conversion(True, prediction, alpha, sigma)
    assert p * x + q * out == pytest.approx(x0, rel=1e-12)
    p, q = conversion(False, prediction, alpha, sigma)
    assert p * x + q * out == pytest.approx(eps, rel=1e-12)
