"""--corrector unic: UniC on the multistep DPM-Solvers.

* exact weights: the corrected latent of a step whose predictor had order p is exact for
  predictions polynomial of degree p in lambda (p + 1 nodes), and not for degree p + 1;
* every weight form raises the order by one on the exact mixture (fitted slopes);
* no extra model call; the last step is the predictor's;
* ``--compat diffusers --corrector unic`` is diffusers' UniPCMultistepScheduler step for step.
"""

import math

import numpy as np
import pytest
import torch
from test_cli_edges import invoke, one_line_error
from test_exactness import LAMBDAS, SIGMAS, PolynomialModel, exact_step, polynomial

from dpmcli import DPMSolver, SolverConfig, build_plan
from dpmcli.coefficients import algo_form, unipc_weights
from dpmcli.errors import ConfigError
from dpmcli.experiment import solve
from dpmcli.models import MixtureModel, ring
from dpmcli.noise import initial_latents
from dpmcli.reference import ode_limit
from dpmcli.solvers import START, step


def corrected_latents(algo, order, prediction_type, degree, coefficients="exact"):
    """Run the polynomial model; return the plan and the corrected latent at every grid point (None where none)."""
    cfg = SolverConfig(algo=algo, order=order, coefficients=coefficients, corrector="unic", sigmas=SIGMAS,
                       lower_order_final=False, prediction_type=prediction_type)
    plan = build_plan(cfg)
    poly, coefs = polynomial(degree)
    model = PolynomialModel(plan, poly)
    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3)
    state, corrected = START, []
    for row in plan.rows:
        out = model(x, plan.timestep_values[row.index])
        x, state = step(row, x, out, state)
        corrected.append(state.anchor.clone() if row.correction else None)
    return plan, corrected, coefs


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_exact_corrector_integrates_degree_p_exactly(algo, order, prediction_type):
    plan, corrected, coefs = corrected_latents(algo, order, prediction_type, degree=order)
    checked = 0
    for k in range(2, plan.steps):
        p = int(plan.orders[k - 1])
        if p != order or corrected[k - 1] is None:
            continue  # warm-up: fewer nodes than the degree needs
        expected = exact_step(algo, LAMBDAS[k - 1], LAMBDAS[k], corrected[k - 1].numpy(), coefs)
        np.testing.assert_allclose(corrected[k].numpy(), expected, rtol=1e-10, atol=1e-11)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("coefficients", ["exact", "published"])
def test_corrector_is_not_exact_one_degree_higher(coefficients):
    """The check above has teeth: degree p + 1 misses by far more than round-off (published weights too)."""
    plan, corrected, coefs = corrected_latents("dpmsolver++", 2, "epsilon", degree=3, coefficients=coefficients)
    k = plan.steps - 1
    expected = exact_step("dpmsolver++", LAMBDAS[k - 1], LAMBDAS[k], corrected[k - 1].numpy(), coefs)
    assert np.abs(corrected[k].numpy() - expected).max() > 1e-6


def test_published_weights_meet_the_order_conditions():
    """UniPC's B(h) weights sum to the first-order weight and match the exact moment of degree one (K >= 2 nodes
    besides 0 solve the order conditions; K = 1 uses rho = 1/2, which is exact only as h -> 0)."""
    form = algo_form("dpmsolver++")
    h, alpha_t, sigma_t = 0.7, 0.8, 0.6
    nodes = [1.0, 0.0, -0.9, -2.1]
    for variant in ("bh1", "bh2"):
        w = unipc_weights(form, h, alpha_t, sigma_t, nodes, variant)
        assert sum(w) == pytest.approx(alpha_t * -math.expm1(-h), rel=1e-12)  # constants integrate exactly
        first = sum(wj * r for wj, r in zip(w, nodes))  # the degree-one moment: alpha_t h^2 phi_2(-h)
        assert first == pytest.approx(alpha_t * (math.expm1(-h) + h) / h, rel=1e-10)


def fitted_slope(options, steps=(40, 80)):
    mix = ring()
    x = initial_latents(0, (128, 2), "cpu", torch.float64)
    errors = []
    for n in steps:
        out, plan = solve(mix, x, steps=n, spacing="logsnr", final_sigma="sigma-min", lower_order_final=False, **options)
        ref = ode_limit(mix, x, float(plan.lambdas[0]), float(plan.lambdas[-1]), process=plan.schedule)
        errors.append((out - ref).norm(dim=1).median().item())
    return math.log(errors[0] / errors[1]) / math.log(steps[1] / steps[0])


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"order": 1, "corrector": "unic", "coefficients": "exact"}, 2),
        ({"order": 2, "corrector": "unic"}, 3),
        ({"order": 2, "corrector": "unic", "unic_variant": "bh1"}, 3),
        ({"order": 2, "corrector": "unic", "coefficients": "exact"}, 3),
        ({"order": 2}, 2),  # without it: the predictor's own order
    ],
)
def test_corrector_raises_the_order_by_one(options, expected):
    slope = fitted_slope(options)
    assert abs(slope - expected) < 0.3, slope
    assert build_plan(SolverConfig(**options)).convergence_order == expected


def test_no_extra_model_call_and_the_last_step_is_the_predictors():
    plain, corrected = build_plan(SolverConfig(steps=8)), build_plan(SolverConfig(steps=8, corrector="unic"))
    assert corrected.nfe == plain.nfe == 8
    assert corrected.rows[0].correction == () and all(r.correction for r in corrected.rows[1:])
    # what the last row does after its correction is the plain last step: weights equal
    assert corrected.rows[-1].b == plain.rows[-1].b and corrected.rows[-1].a == plain.rows[-1].a


def unipc_pair(order, variant, spacing, algo, prediction, final, steps):
    diffusers = pytest.importorskip("diffusers")
    flags = {"linspace": {}, "trailing": {"timestep_spacing": "trailing"}, "karras": {"use_karras_sigmas": True}}
    theirs = diffusers.UniPCMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=order, solver_type=variant,
        predict_x0=algo == "dpmsolver++", prediction_type=prediction, final_sigmas_type=final.replace("-", "_"), **flags[spacing],
    )
    theirs.set_timesteps(steps)
    ours = DPMSolver(algo=algo, order=order, spacing=spacing, steps=steps, compat="diffusers", corrector="unic",
                     unic_variant=variant, prediction_type=prediction, final_sigma=final)
    return theirs, ours


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("spacing, algo, prediction, final, steps", [
    ("linspace", "dpmsolver++", "epsilon", "zero", 12),
    ("karras", "dpmsolver++", "v_prediction", "zero", 5),
    ("trailing", "dpmsolver", "epsilon", "sigma-min", 12),
])
def test_compat_is_diffusers_unipc(order, variant, spacing, algo, prediction, final, steps):
    if variant == "bh1" and final == "zero":
        final = "sigma-min"  # diffusers' bh1 returns NaN on the step to sigma 0 (refused above)
    theirs, ours = unipc_pair(order, variant, spacing, algo, prediction, final, steps)
    assert [int(t) for t in theirs.timesteps] == [int(t) for t in ours.timesteps]
    model = MixtureModel(ring()).bind(ours.plan)
    a = torch.randn(64, 2, generator=torch.Generator().manual_seed(order))
    b = a.clone()
    for t in theirs.timesteps:
        a = theirs.step(model(a, int(t)), t, a).prev_sample
    assert torch.isfinite(a).all()
    for t in ours.timesteps:
        b = ours.step(model(b, t), t, b)
    assert ((a.double() - b.double()).abs().max() / max(1.0, b.abs().max().item())).item() < 1e-5
    # and it is not DPMSolverMultistep's arithmetic under another name
    other = DPMSolver(algo=algo, order=order, spacing=spacing, steps=steps, compat="diffusers", prediction_type=prediction, final_sigma=final)
    c = torch.randn(64, 2, generator=torch.Generator().manual_seed(order))
    for t in other.timesteps:
        c = other.step(model(c, t), t, c)
    assert (c - b).abs().max() > 1e-4


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"method": "singlestep"}, "--corrector: unic corrects multistep steps"),
        ({"method": "adaptive"}, "--corrector: unic corrects multistep steps"),
        ({"order": 3, "startup": "singlestep"}, "--startup singlestep"),
        ({"algo": "sde-dpmsolver++"}, "--corrector: unic is a corrector for the ODE algorithms"),
        ({"compat": "k-diffusion"}, "--corrector: k-diffusion has no UniC corrector"),
        ({"compat": "diffusers", "order": 4}, "UniPCMultistepScheduler stops at order 3"),
        ({"compat": "diffusers", "spacing": "logsnr"}, "no logsnr grid"),
        ({"unic_variant": "bh3"}, "--unic-variant: 'bh3' is not allowed"),
        ({"compat": "diffusers", "unic_variant": "bh1"}, "bh1 with --final-sigma zero gives NaN"),
    ],
)
def test_refusals(options, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        build_plan(SolverConfig(corrector="unic", **options))


def test_cli_refusal_is_one_line():
    one_line_error(invoke("sample", "--corrector", "unic", "--method", "ancestral", "--order", "1"), 2, "--corrector: unic")
    one_line_error(invoke("sample", "--corrector", "unik"), 2, "--corrector: 'unik'")


def test_documents_without_a_corrector_keep_their_keys():
    assert "corrector" not in SolverConfig().to_dict()
    assert SolverConfig(corrector="unic").to_dict()["unic_variant"] == "bh2"


def test_more_compat_refusals_and_zero_length_steps():
    with pytest.raises(ConfigError, match="thresholds the data prediction only"):
        build_plan(SolverConfig(corrector="unic", compat="diffusers", algo="dpmsolver", thresholding=True, final_sigma="sigma-min"))
    with pytest.raises(ConfigError, match="--euler-at-final: UniPCMultistepScheduler has no such option"):
        build_plan(SolverConfig(corrector="unic", compat="diffusers", euler_at_final=True))
    # a diffusers grid with a repeated timestep: planned, and the rows that divide by h = 0 say why
    plan = build_plan(SolverConfig(compat="diffusers", corrector="unic", order=3, train_steps=25, steps=25))
    assert any(row.failure and "zero length" in row.failure for row in plan.rows)


def test_higher_order_claims_are_capped():
    assert build_plan(SolverConfig(order=3, coefficients="exact", corrector="unic")).convergence_order == 3


def test_network_runs_with_the_corrector_are_scored(tmp_path):
    """A corrected run on a network is scored against the plain reference run (the reference takes no corrector)."""
    import json

    result = invoke("compare", "--model", "digits", "--algo", "dpmsolver++", "--order", 2, "--corrector", "none,unic", "--steps", 4,
                    "--batch", 8, "--reference-steps", 12, "--cache-dir", tmp_path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert {r.get("corrector", "none") for r in runs} == {"none", "unic"} and all(r["error"] > 0 for r in runs)
