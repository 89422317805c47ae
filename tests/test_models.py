"""Exact mixture denoisers and the reference ODE solution against independent computations."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dpmcli import ConfigError, SolverConfig, build_plan
from dpmcli.models import MixtureModel, gmm64, load_mixture, ring
from dpmcli.models.mixture import GaussianMixture
from dpmcli.reference import ode_solution
from dpmcli.schedule import Schedule

MIX_1D = GaussianMixture("1d", np.array([0.3, 0.7]), np.array([[-1.0], [0.8]]), np.array([[0.3], [0.5]]))


@pytest.mark.parametrize("alpha", [0.2, 0.7, 0.95])
def test_posterior_mean_matches_numerical_integration(alpha):
    sigma = math.sqrt(1 - alpha**2)
    prior = lambda x0: sum(
        w * math.exp(-0.5 * ((x0 - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        for w, m, s in zip(MIX_1D.weights, MIX_1D.means[:, 0], MIX_1D.stds[:, 0])
    )
    for x in (-1.5, 0.1, 1.2):
        like = lambda x0: math.exp(-0.5 * ((x - alpha * x0) / sigma) ** 2)
        num, _ = quad(lambda x0: x0 * prior(x0) * like(x0), -10, 10, epsabs=1e-13, limit=200)
        den, _ = quad(lambda x0: prior(x0) * like(x0), -10, 10, epsabs=1e-13, limit=200)
        x0, eps = MIX_1D.denoise(torch.tensor([[x]], dtype=torch.float64), alpha, sigma)
        assert x0.item() == pytest.approx(num / den, rel=1e-7)
        assert eps.item() == pytest.approx((x - alpha * num / den) / sigma, rel=1e-6, abs=1e-9)


def test_prediction_types_are_consistent():
    plan = build_plan(SolverConfig())
    x = torch.randn(16, 2, dtype=torch.float64)
    outs = {p: MixtureModel(ring(), plan.schedule, p)(x, 500) for p in ("epsilon", "sample", "v_prediction")}
    alpha, sigma = MixtureModel(ring(), plan.schedule).noise_level(500)
    torch.testing.assert_close(alpha * outs["sample"] + sigma * outs["epsilon"], x)
    torch.testing.assert_close(outs["v_prediction"], alpha * outs["epsilon"] - sigma * outs["sample"])


def test_fractional_timesteps_give_the_interpolated_noise_level():
    plan = build_plan(SolverConfig())
    model = MixtureModel(ring(), plan.schedule)
    alpha, sigma = model.noise_level(412.25)
    lam = float(plan.schedule.lambda_at(412.25))
    assert math.log(alpha / sigma) == pytest.approx(lam, rel=1e-12)
    assert alpha**2 + sigma**2 == pytest.approx(1.0, rel=1e-14)


PROCESSES = {
    "vp": SolverConfig(),
    "flow": SolverConfig(process="flow", prediction_type="flow_prediction", flow_shift=3.0),
    "edm": SolverConfig(process="edm", spacing="karras"),
}


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_reference_matches_the_closed_form_for_a_single_gaussian(process):
    mean, std = np.array([[0.5, -1.0]]), np.array([[0.4, 1.3]])
    single = GaussianMixture("single", np.array([1.0]), mean, std)
    x_start = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam0, lam1 = -2.4, 2.9
    schedule = Schedule.from_config(PROCESSES[process])
    got = ode_solution(single, x_start, lam0, lam1, process=schedule)
    # On any Gaussian path the flow keeps the standardised coordinate fixed:
    # (x - alpha mu) / sqrt(alpha^2 s^2 + sigma^2), in that process's alpha and sigma.
    (a0, s0), (a1, s1) = schedule.alpha_sigma(lam0), schedule.alpha_sigma(lam1)
    mu, var = torch.tensor(mean), torch.tensor(std**2)
    z = (x_start - a0 * mu) / torch.sqrt(a0**2 * var + s0**2)
    expected = a1 * mu + torch.sqrt(a1**2 * var + s1**2) * z
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_shipped_mixtures_have_the_advertised_shapes():
    r = ring()
    assert r.dims == 2 and r.components == 8 and np.allclose(r.weights, 1 / 8)
    g = gmm64()
    assert g.dims == 64 and g.components == 10
    assert g.weights.max() / g.weights.min() > 2  # unequal weights
    assert g.stds.std() > 0.05  # unequal spreads


def test_gmm_json_files(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"weights": [1, 3], "means": [[0, 0, 1], [1, 1, 1]], "stds": [0.5, 0.2]}))
    mix = load_mixture(f"gmm:{good}")
    assert mix.dims == 3 and np.allclose(mix.weights, [0.25, 0.75]) and mix.stds.shape == (2, 3)
    assert len(mix.notes) == 1 and "sum to 4" in mix.notes[0]  # relative weights are rescaled, with a warning
    cases = {
        "missing.json": None,
        "notjson.json": "{weights: 1",
        "nokey.json": json.dumps({"weights": [1], "means": [[0]]}),
        "shape.json": json.dumps({"weights": [1, 1], "means": [[0, 0]], "stds": [1, 1]}),
        "negative.json": json.dumps({"weights": [1], "means": [[0]], "stds": [-1]}),
        "list.json": json.dumps([1, 2]),
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_mixture(f"gmm:{path}")
        assert "--model" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        load_mixture("moons")


# ---------------------------------------------------------------- bind: a callable per run, the model unchanged


def test_mixture_bind_returns_a_bound_model_and_leaves_the_model_unchanged():
    first = build_plan(SolverConfig(steps=8))
    second = build_plan(SolverConfig(steps=5, prediction_type="sample", beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    model = MixtureModel(ring())
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = model.bind(first)
    before = a(x, 400)
    b = model.bind(second)
    torch.testing.assert_close(a(x, 400), before, rtol=0, atol=0)  # binding another plan changes nothing bound
    torch.testing.assert_close(model.bind(first)(x, 400), before, rtol=0, atol=0)  # any order, same answers
    assert model.schedule is None and model.prediction_type == "epsilon"
    assert (b.prediction_type, b.schedule) == ("sample", second.schedule) and b.name == model.name
    fresh = MixtureModel(ring(), second.schedule, "sample")
    torch.testing.assert_close(b(x, 400), fresh(x, 400), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="--guidance-scale"):
        model.bind(first, guidance_scale=2.0)


def test_guided_bind_passes_the_scale_per_call():
    from dpmcli.models.digits import load_digits_model

    plan = build_plan(SolverConfig(steps=4))
    model = load_digits_model(class_label=3, guidance_scale=2.0)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert model.bind(plan) is model  # no scale: the model itself
    strong = model.bind(plan, 4.0)(x, 500)
    weak = model.bind(plan, 1.0)(x, 500)
    own = model(x, 500)
    assert model.guidance_scale == 2.0  # never changed by a bind
    torch.testing.assert_close(model.bind(plan, 4.0)(x, 500), strong, rtol=0, atol=0)  # any order, same answers
    torch.testing.assert_close(model.bind(plan, 2.0)(x, 500), own, rtol=0, atol=0)
    torch.testing.assert_close(model(x, 500, guidance_scale=1.0), weak, rtol=0, atol=0)
    assert not torch.equal(strong, weak)
