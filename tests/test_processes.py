"""Flow and EDM beside VP, checked against mathematics: exactness, convergence, the shift, prediction types, bad input.

On every Gaussian path x = alpha x0 + sigma eps with lambda = log(alpha / sigma), the
probability-flow ODE in lambda is

    dx/dlambda = (d log sigma / dlambda) x + alpha x0_hat(x, lambda),

i.e. d(x / sigma)/dlambda = e^lambda x0_hat, or, with x0_hat = (x - sigma eps_hat) / alpha,
d(x / alpha)/dlambda = -e^-lambda eps_hat. With a prediction P(lambda) that is a polynomial the
variation-of-constants solution of one step lambda_s -> lambda_t (h = lambda_t - lambda_s) is

    data  (P = x0_hat):  x_t = sigma_t / sigma_s x_s + alpha_t K(+1)
    noise (P = eps_hat): x_t = alpha_t / alpha_s x_s - sigma_t K(-1)

    K(kappa) = int_{lambda_s}^{lambda_t} e^{-kappa (lambda_t - lambda)} P(lambda) dlambda
             = sum_k (-1)^k kappa^-(k+1) [P^(k)(lambda_t) - e^{-kappa h} P^(k)(lambda_s)]

(differentiate the bracketed antiderivative to check it). Only alpha_t, sigma_t and
d log sigma / dlambda depend on the process; they are written out below from the processes'
definitions, not read from the library:

    vp:   alpha = (1 + e^-2l)^-1/2, sigma = (1 + e^2l)^-1/2,  d log sigma/dl = -alpha^2
    flow: alpha = 1 - s = 1 / (1 + e^-l), sigma = s = 1 / (1 + e^l),  d log sigma/dl = -alpha
    edm:  alpha = 1, sigma = e^-l,  d log sigma/dl = -1
"""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as npoly
from scipy.integrate import solve_ivp
from typer.testing import CliRunner

from dpmcli import SolverConfig, build_plan
from dpmcli.cli.main import app
from dpmcli.errors import ConfigError
from dpmcli.experiment import solve
from dpmcli.models import MixtureModel, gmm64, ring
from dpmcli.reference import ode_solution
from dpmcli.sampler import sample

DIMS = 3
TRAIN_STEPS = 1000


def path(process: str, lam: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, d log sigma_t / d lambda) of a process at lambda, from its definition."""
    if process == "flow":
        alpha, sigma = 1.0 / (1.0 + math.exp(-lam)), 1.0 / (1.0 + math.exp(lam))
        return alpha, sigma, -alpha
    if process == "edm":
        return 1.0, math.exp(-lam), -1.0
    alpha, sigma = (1.0 + math.exp(-2.0 * lam)) ** -0.5, (1.0 + math.exp(2.0 * lam)) ** -0.5
    return alpha, sigma, -alpha * alpha


class Polynomial:
    """P(lambda) = sum_n c_n ((lambda - centre) / width)^n, DIMS values: a polynomial of ``degree`` in lambda
    (centred and scaled so that its values stay O(1) over the grid, which keeps round-off small)."""

    def __init__(self, degree: int, centre: float = 0.0, width: float = 1.0, seed: int = 0):
        self.degree, self.centre, self.width = degree, centre, width
        self.coefs = np.random.default_rng(100 + 7 * degree + seed).normal(size=(degree + 1, DIMS))

    def derivative(self, lam: float, k: int = 0) -> np.ndarray:
        """d^k P / d lambda^k at lambda."""
        if k > self.degree:
            return np.zeros(DIMS)
        coefs = npoly.polyder(self.coefs, k, axis=0) if k else self.coefs
        return npoly.polyval((lam - self.centre) / self.width, coefs) / self.width**k

    def __call__(self, lam: float) -> np.ndarray:
        return self.derivative(lam, 0)


def kernel_integral(poly: Polynomial, kappa: float, lam_s: float, lam_t: float) -> np.ndarray:
    """K(kappa) = int e^{-kappa (lambda_t - lambda)} P(lambda) dlambda over [lambda_s, lambda_t], in closed form."""
    decay = math.exp(-kappa * (lam_t - lam_s))
    return sum(
        (-1) ** k / kappa ** (k + 1) * (poly.derivative(lam_t, k) - decay * poly.derivative(lam_s, k))
        for k in range(poly.degree + 1)
    )


def exact_step(process: str, algo: str, lam_s: float, lam_t: float, x_s: np.ndarray, poly: Polynomial) -> np.ndarray:
    """The exact solution at lambda_t of the probability-flow ODE with prediction P, from x_s at lambda_s."""
    alpha_s, sigma_s, _ = path(process, lam_s)
    alpha_t, sigma_t, _ = path(process, lam_t)
    if algo == "dpmsolver++":
        return sigma_t / sigma_s * x_s + alpha_t * kernel_integral(poly, 1.0, lam_s, lam_t)
    return alpha_t / alpha_s * x_s - sigma_t * kernel_integral(poly, -1.0, lam_s, lam_t)


def ode_rhs(process: str, algo: str, poly: Polynomial):
    """dx/dlambda = (log sigma)' x + alpha x0_hat, with x0_hat = P (data) or (x - sigma P) / alpha (noise)."""

    def rhs(lam, x):
        alpha, sigma, dlog_sigma = path(process, lam)
        x0 = poly(lam) if algo == "dpmsolver++" else (x - sigma * poly(lam)) / alpha
        return dlog_sigma * x + alpha * x0

    return rhs


# ------------------------------------------------------------------- the processes' own scales


@pytest.mark.parametrize("process", ["vp", "flow", "edm"])
@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
def test_closed_form_step_solves_the_processes_ode(process, algo):
    """The formula every exactness check below relies on is the ODE's solution (DOP853, on the written-out path)."""
    poly = Polynomial(3, centre=0.5, width=2.0)
    x_s = np.array([0.3, -0.7, 1.1])
    for lam_s, lam_t in [(-2.3, -0.4), (-0.4, 1.9), (1.0, 4.5)]:
        ode = solve_ivp(ode_rhs(process, algo, poly), (lam_s, lam_t), x_s, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
        np.testing.assert_allclose(exact_step(process, algo, lam_s, lam_t, x_s, poly), ode, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("process", ["vp", "flow", "edm"])
def test_schedule_scales_are_the_processes_definitions(process):
    """alpha_t, sigma_t and the ODE's scales of each process, as its definition gives them."""
    options = {"flow": dict(prediction_type="flow_prediction"), "edm": dict(spacing="karras")}.get(process, {})
    schedule = build_plan(SolverConfig(process=process, steps=5, **options)).schedule
    for lam in (-7.5, -3.0, -0.2, 0.0, 0.7, 4.0, 9.0):
        alpha, sigma, dlog_sigma = path(process, lam)
        np.testing.assert_allclose(schedule.alpha_sigma(lam), (alpha, sigma), rtol=1e-14)
        ode_alpha, _, c = schedule.ode_scales(lam)  # dx/dlambda = alpha (x0 - c x)
        np.testing.assert_allclose((ode_alpha, -ode_alpha * c), (alpha, dlog_sigma), rtol=1e-13)
        if process == "flow":
            assert alpha + sigma == pytest.approx(1.0, abs=1e-15)
            # the network sees timestep T s, and a timestep means s = t / T whatever the shift
            t = float(schedule.timestep_at(lam))
            assert t == pytest.approx(TRAIN_STEPS * sigma, rel=1e-13)
            assert float(schedule.lambda_at(t)) == pytest.approx(lam, abs=1e-9)
            assert schedule.noise_level(t) == pytest.approx((alpha, sigma), rel=1e-12)
        if process == "edm":
            assert float(schedule.timestep_at(lam)) == pytest.approx(math.log(sigma) / 4.0, abs=1e-15)  # c_noise


# ------------------------------------------------------------------- 1. polynomial exactness

# The processes and grids the exactness checks step on (VP as the control). The grids are the
# processes' own: diffusers' flow grid (linspace, uniform in s, shifted) and EDM's karras ramp,
# both strongly non-uniform in lambda.
PROCESS_CASES = {
    "vp": dict(process="vp", prediction_type="epsilon", spacing="logsnr"),
    "flow": dict(process="flow", prediction_type="flow_prediction", spacing="linspace"),
    "flow-shift3": dict(process="flow", prediction_type="flow_prediction", flow_shift=3.0, spacing="linspace"),
    "flow-shift3-karras": dict(process="flow", prediction_type="v_prediction", flow_shift=3.0, spacing="karras"),
    "edm": dict(process="edm", prediction_type="epsilon", spacing="karras"),
    "edm-v": dict(process="edm", prediction_type="v_prediction", spacing="logsnr"),
}
EXACT_STEPS = 10


class PolynomialModel:
    """Outputs whatever makes the integrated prediction m0 = p x + q out equal P(lambda), told what a network is told."""

    def __init__(self, plan, poly: Polynomial):
        self.plan, self.poly = plan, poly
        self.calls = 0

    def __call__(self, x_in, t):
        row = self.plan.rows[self.calls]
        self.calls += 1
        lam = float(self.plan.schedule.lambda_at(float(t)))  # the noise level the timestep means
        planned = self.plan.evaluations[row.index].lam
        assert abs(lam - planned) < 1e-9 * max(1.0, abs(planned)), (t, lam, planned)
        x = x_in / row.input_scale  # EDM's network sees c_in x
        target = torch.as_tensor(self.poly(lam), dtype=x.dtype).expand_as(x)
        return (target - row.p * x) / row.q


def run_polynomial(case: str, degree: int, **options):
    cfg = SolverConfig(
        coefficients="exact", steps=EXACT_STEPS, final_sigma="sigma-min", lower_order_final=False,
        **PROCESS_CASES[case], **options,
    )
    plan = build_plan(cfg)
    lams = plan.lambdas
    poly = Polynomial(degree, centre=0.5 * (lams[0] + lams[-1]), width=0.5 * (lams[-1] - lams[0]))
    x = torch.linspace(-1.0, 1.0, 2 * DIMS, dtype=torch.float64).reshape(2, DIMS) * plan.schedule.init_noise_sigma
    calls = []
    sample(plan, PolynomialModel(plan, poly), x, callbacks=(lambda e: calls.append((e.row, e.x, e.x_next)),))
    assert len(calls) == plan.nfe
    return plan, calls, poly


def assert_exact(got: torch.Tensor, expected: np.ndarray, where):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10 * scale, err_msg=str(where))


@pytest.mark.parametrize("case", list(PROCESS_CASES))
@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_multistep_exact_weights_integrate_degree_k_minus_1_exactly(case, algo, order):
    plan, calls, poly = run_polynomial(case, order - 1, algo=algo, order=order)
    process = plan.config.process
    checked = 0
    for row, x, x_next in calls:
        if plan.orders[row.step] != order:
            continue  # the warm-up steps of lower order
        start = plan.evaluations[row.index].lam
        assert row.target == plan.lambdas[row.step + 1]
        assert_exact(x_next, exact_step(process, algo, start, row.target, x.numpy(), poly), (row.step, start, row.target))
        checked += 1
    assert checked == EXACT_STEPS - (order - 1)


@pytest.mark.parametrize("case", list(PROCESS_CASES))
@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_exact_weights_integrate_degree_k_minus_1_exactly(case, algo, order):
    """DPM-Solver-k's last stage, from the latent at the start of its step, through its inner evaluations."""
    plan, calls, poly = run_polynomial(case, order - 1, algo=algo, order=order, method="singlestep")
    process = plan.config.process
    assert plan.nfe == order * EXACT_STEPS
    inputs = {row.index: x for row, x, _ in calls}
    checked = 0
    for row, _, x_next in calls:
        if row.stage != order - 1:
            continue
        start = plan.evaluations[row.anchor]
        assert start.stage == 0 and start.step == row.step
        expected = exact_step(process, algo, start.lam, plan.lambdas[row.step + 1], inputs[row.anchor].numpy(), poly)
        assert_exact(x_next, expected, row.step)
        checked += 1
    assert checked == EXACT_STEPS


@pytest.mark.parametrize("case", ["flow", "flow-shift3", "edm"])
@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("method", ["multistep", "singlestep"])
def test_exactness_has_teeth_one_degree_higher(case, algo, method):
    """The same updates miss a polynomial one degree higher by far more than round-off."""
    plan, calls, poly = run_polynomial(case, 2, algo=algo, order=2, method=method)
    inputs = {row.index: x for row, x, _ in calls}
    row, _, x_next = calls[-1]
    start = plan.evaluations[row.anchor]
    expected = exact_step(plan.config.process, algo, start.lam, row.target, inputs[row.anchor].numpy(), poly)
    assert np.abs(x_next.numpy() - expected).max() > 1e-6


# ------------------------------------------------------------------- 2. convergence orders


def run(mixture, x_T, network=None, **options):
    """The exact mixture model (or ``network(mixture, plan)``) run by the command line's loop: (samples, plan).

    Like ``experiment.solve``, but through ``sampler.sample``, the loop that gives an EDM network
    its c_in x (test_api_solve_matches_the_sampler_loop checks solve itself).
    """
    plan = build_plan(SolverConfig(**options))
    model = MixtureModel(mixture).bind(plan) if network is None else network(mixture, plan)
    noise = lambda i, like, scale: torch.randn(like.shape, generator=torch.Generator().manual_seed(i), dtype=like.dtype)  # noqa: E731
    return sample(plan, model, x_T.clone(), noise=noise).samples, plan


# From 40 steps: on flow and EDM the logsnr grid spans a wider lambda range than VP's (13.8 and
# 10.6 against 6.2), and the noise form's third order is still pre-asymptotic at 20 steps (local slopes
# 1.6, 2.5, 2.9, 3.0 from 20 to 320 steps on flow).
CONVERGENCE_STEPS = (40, 80, 160, 320)
RING = ring()
CONVERGENCE_PROCESSES = {
    "flow": dict(process="flow", prediction_type="flow_prediction"),
    "flow-shift3": dict(process="flow", prediction_type="flow_prediction", flow_shift=3.0),
    "edm": dict(process="edm", prediction_type="epsilon"),
}
_references: dict = {}


def converge_run(case, x_T, steps, **options):
    return run(
        RING, x_T, steps=steps, spacing="logsnr", final_sigma="sigma-min", lower_order_final=False,
        coefficients="exact", **CONVERGENCE_PROCESSES[case], **options,
    )


def convergence_problem(case):
    """x_T (drawn at the process's noise level) and its exact ODE solution at the grid's last lambda."""
    if case not in _references:
        _, plan = converge_run(case, torch.zeros(1, 2, dtype=torch.float64), 10)
        noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x_T = noise * plan.schedule.init_noise_sigma
        reference = ode_solution(RING, x_T, float(plan.lambdas[0]), float(plan.lambdas[-1]), process=plan.schedule)
        _references[case] = x_T, reference
    return _references[case]


def fitted_slope(case, **options):
    x_T, reference = convergence_problem(case)
    errors = []
    for n in CONVERGENCE_STEPS:
        x, plan = converge_run(case, x_T, n, **options)
        assert plan.steps == n and plan.schedule.process == CONVERGENCE_PROCESSES[case]["process"]
        errors.append((x - reference).norm(dim=1).median().item())
    return -np.polyfit(np.log(CONVERGENCE_STEPS), np.log(errors), 1)[0], errors


@pytest.mark.parametrize("case", ["flow", "edm"])
@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_exact_weights_reach_their_order(case, algo, order):
    slope, errors = fitted_slope(case, algo=algo, order=order)
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.parametrize("case", ["flow-shift3", "edm"])
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_exact_weights_reach_their_order(case, order):
    slope, errors = fitted_slope(case, method="singlestep", order=order)
    assert abs(slope - order) < 0.3, (slope, errors)


# ------------------------------------------------------------------- 3. the flow shift


def flow_plan(spacing, steps=12, final_sigma="sigma-min", **options):
    return build_plan(SolverConfig(
        process="flow", prediction_type="flow_prediction", spacing=spacing, steps=steps, final_sigma=final_sigma, **options,
    ))


@pytest.mark.parametrize("spacing", ["logsnr", "karras", "exponential", "beta"])
@pytest.mark.parametrize("shift", [3.0, 6.0, 0.5])
@pytest.mark.parametrize("final_sigma", ["sigma-min", "zero"])
def test_flow_shift_translates_the_lambda_grid(spacing, shift, final_sigma):
    base = flow_plan(spacing, final_sigma=final_sigma)
    moved = flow_plan(spacing, final_sigma=final_sigma, flow_shift=shift)
    np.testing.assert_allclose(moved.lambdas, base.lambdas - math.log(shift), rtol=0, atol=1e-12)
    # the column and the network's timestep are the process's own at those lambdas: s, T s
    s = np.array([path("flow", lam)[1] if math.isfinite(lam) else 0.0 for lam in moved.lambdas])
    np.testing.assert_allclose(moved.sigmas, s, rtol=1e-12, atol=0)
    np.testing.assert_allclose(moved.timesteps, TRAIN_STEPS * s[:-1], rtol=1e-12)


@pytest.mark.parametrize("shift", [3.0, 6.0, 0.5])
@pytest.mark.parametrize("final_sigma", ["sigma-min", "zero"])
def test_flow_linspace_grid_is_diffusers_shifted_grid(shift, final_sigma):
    steps = 12
    base = flow_plan("linspace", steps=steps, final_sigma=final_sigma)
    moved = flow_plan("linspace", steps=steps, final_sigma=final_sigma, flow_shift=shift)
    # unshifted: uniform in s from 1 - 1/T down (diffusers' flow sigmas)
    top = 1.0 - 1.0 / TRAIN_STEPS
    np.testing.assert_allclose(base.sigmas[:-1], np.linspace(top, 0.0, steps + 1)[:-1], rtol=1e-13)
    s = base.sigmas
    np.testing.assert_allclose(moved.sigmas, shift * s / (1.0 + (shift - 1.0) * s), rtol=1e-12, atol=0)
    np.testing.assert_allclose(moved.timesteps, TRAIN_STEPS * moved.sigmas[:-1], rtol=1e-12)
    finite = np.isfinite(base.lambdas)
    np.testing.assert_allclose(moved.lambdas[finite], base.lambdas[finite] - math.log(shift), rtol=0, atol=1e-11)
    assert list(np.isfinite(moved.lambdas)) == list(finite)


@pytest.mark.parametrize("spacing", ["linspace", "logsnr", "karras"])
def test_flow_mu_is_the_shift_exp_mu(spacing):
    by_shift = flow_plan(spacing, flow_shift=3.0)
    by_mu = flow_plan(spacing, flow_mu=math.log(3.0))
    np.testing.assert_allclose(by_mu.lambdas, by_shift.lambdas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(by_mu.timesteps, by_shift.timesteps, rtol=1e-12)


def test_flow_shift_moves_the_grid_not_the_process():
    """What a timestep means (its lambda, its noise level) is the same under every shift."""
    base, moved = flow_plan("linspace").schedule, flow_plan("linspace", flow_shift=3.0).schedule
    t = np.array([1.0, 17.5, 250.0, 500.0, 999.0])
    np.testing.assert_array_equal(moved.lambda_at(t), base.lambda_at(t))
    for value in t:
        assert moved.noise_level(value) == base.noise_level(value) == pytest.approx((1 - value / 1000, value / 1000), rel=1e-15)


# ------------------------------------------------------------------- 4. prediction types agree

PREDICTION_TYPES = {
    "vp": ("epsilon", "sample", "v_prediction"),
    "flow": ("flow_prediction", "epsilon", "sample", "v_prediction"),
    "edm": ("epsilon", "v_prediction"),
}
PROCESS_GRIDS = {
    "vp": dict(process="vp", spacing="linspace"),
    "flow": dict(process="flow", spacing="linspace", flow_shift=3.0),
    "edm": dict(process="edm", spacing="karras"),
}
SOLVERS = {
    "dpmsolver++3-exact": dict(algo="dpmsolver++", order=3, coefficients="exact"),
    "dpmsolver2": dict(algo="dpmsolver", order=2),
    "singlestep3": dict(algo="dpmsolver++", method="singlestep", order=3),
    "sde-dpmsolver++2": dict(algo="sde-dpmsolver++", order=2),
}


@pytest.mark.parametrize("process", list(PREDICTION_TYPES))
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("mixture, batch", [(RING, 64), (gmm64(), 16)], ids=["ring", "gmm64"])
def test_every_prediction_type_gives_the_same_samples(process, solver, mixture, batch):
    runs = {}
    for prediction_type in PREDICTION_TYPES[process]:
        options = dict(steps=12, prediction_type=prediction_type, **PROCESS_GRIDS[process], **SOLVERS[solver])
        plan = build_plan(SolverConfig(**options))
        noise = torch.randn(batch, mixture.dims, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        runs[prediction_type], plan = run(mixture, noise * plan.schedule.init_noise_sigma, **options)
        assert plan.config.prediction_type == prediction_type and plan.schedule.process == process
    first, *others = PREDICTION_TYPES[process]
    base = runs[first]
    assert torch.isfinite(base).all()
    scale = max(1.0, base.abs().max().item())
    for other in others:
        gap = (runs[other] - base).abs().max().item()
        assert gap < 1e-10 * scale, (other, first, gap)


class Network:
    """A perfect network written from the processes' definitions, told only what a network is told.

    flow: timestep t = T s, alpha = 1 - s, sigma = s; outputs v = eps - x0 (flow_prediction), eps,
    x0 or alpha eps - sigma x0. edm: input c_in x and c_noise = ln(sigma) / 4; outputs F with
    x0 = c_skip x + c_out F (epsilon: c_out > 0, v_prediction: c_out < 0). vp: the schedule's
    alpha_bar at the timestep (the control).
    """

    def __init__(self, mixture, plan):
        cfg = plan.config
        self.mixture, self.process, self.kind, self.sigma_data = mixture, cfg.process, cfg.prediction_type, cfg.sigma_data
        self.schedule = plan.schedule

    def __call__(self, x_in, t):
        t = float(t)
        x = x_in
        if self.process == "flow":
            alpha, sigma = 1.0 - t / TRAIN_STEPS, t / TRAIN_STEPS
        elif self.process == "edm":
            alpha, sigma = 1.0, math.exp(4.0 * t)
            x = x_in * math.sqrt(sigma * sigma + self.sigma_data**2)  # x = (c_in x) / c_in
        else:
            alpha, sigma, _ = path("vp", float(self.schedule.lambda_at(t)))
        x0, eps = self.mixture.denoise(x, alpha, sigma)
        if self.process == "edm":
            d2 = self.sigma_data**2
            c_skip, c_out = d2 / (sigma * sigma + d2), sigma * self.sigma_data / math.sqrt(sigma * sigma + d2)
            return (x0 - c_skip * x) / (c_out if self.kind == "epsilon" else -c_out)
        return {"flow_prediction": eps - x0, "epsilon": eps, "sample": x0}.get(self.kind, alpha * eps - sigma * x0)


NETWORK_CASES = [(process, kind) for process in PREDICTION_TYPES for kind in PREDICTION_TYPES[process]] + [
    ("edm-sigmas", "epsilon"), ("edm-sigmas", "v_prediction"), ("flow-mu", "flow_prediction"), ("flow-mu", "v_prediction"),
]
OTHER_GRIDS = {
    "edm-sigmas": dict(process="edm", spacing="exponential", sigma_min=0.01, sigma_max=20.0, sigma_data=1.3),
    "flow-mu": dict(process="flow", spacing="karras", flow_mu=0.8),
}


@pytest.mark.parametrize("case, prediction_type", NETWORK_CASES)
@pytest.mark.parametrize("solver", ["dpmsolver++3-exact", "dpmsolver2"])
def test_a_network_written_from_the_definitions_gives_the_toys_samples(case, prediction_type, solver):
    """The toy's outputs and the plan's conversions follow the processes' conventions, not only each other."""
    options = dict(steps=12, prediction_type=prediction_type, **{**PROCESS_GRIDS, **OTHER_GRIDS}[case], **SOLVERS[solver])
    plan = build_plan(SolverConfig(**options))
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * plan.schedule.init_noise_sigma
    by_toy, _ = run(RING, x_T, **options)
    by_network, _ = run(RING, x_T, network=Network, **options)
    assert torch.isfinite(by_toy).all()
    gap = (by_network - by_toy).abs().max().item()
    assert gap < 1e-10 * max(1.0, by_toy.abs().max().item()), gap


@pytest.mark.parametrize("process", list(PREDICTION_TYPES))
def test_api_solve_matches_the_sampler_loop(process):
    """experiment.solve (the DPMSolver API loop) and the command line's loop run the same ODE solver."""
    options = dict(steps=12, algo="dpmsolver++", order=2, prediction_type=PREDICTION_TYPES[process][0], **PROCESS_GRIDS[process])
    plan = build_plan(SolverConfig(**options))
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * plan.schedule.init_noise_sigma
    by_api, _ = solve(RING, x_T, **options)
    by_loop, _ = run(RING, x_T, **options)
    gap = (by_api - by_loop).abs().max().item()
    assert gap < 1e-12, gap


# ------------------------------------------------------------------- 5. bad input

runner = CliRunner()

BAD_INPUT = {
    "flow_prediction-under-vp": (["--prediction-type", "flow_prediction"], "--prediction-type"),
    "flow_prediction-under-edm": (["--process", "edm", "--prediction-type", "flow_prediction"], "--prediction-type"),
    "flow-shift-0": (["--process", "flow", "--flow-shift", "0"], "--flow-shift"),
    "flow-shift-minus-1": (["--process", "flow", "--flow-shift", "-1"], "--flow-shift"),
    "flow-shift=-1": (["--process", "flow", "--flow-shift=-1"], "--flow-shift"),
    "flow-mu-under-vp": (["--flow-mu", "1"], "--flow-mu"),
    "flow-mu-under-edm": (["--process", "edm", "--flow-mu", "1"], "--flow-mu"),
    "flow-mu-with-flow-shift": (["--process", "flow", "--flow-mu", "1", "--flow-shift", "3"], "--flow-mu"),
    "sigma-min-above-max": (["--process", "edm", "--sigma-min", "90"], "--sigma-min"),
    "sigma-data-0": (["--process", "edm", "--sigma-data", "0"], "--sigma-data"),
    "vp-option-under-edm": (["--process", "edm", "--beta-start", "0.001"], "--beta-start"),
    "linspace-under-edm": (["--process", "edm", "--spacing", "linspace"], "--spacing"),
}
COMMANDS = {"sample": ["sample", "--batch", "8", "--save", "out.npy"], "schedule": ["schedule"]}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("bad", list(BAD_INPUT))
def test_bad_process_options_are_one_line_exit_2_nothing_written(command, bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, flag = BAD_INPUT[bad]
    result = runner.invoke(app, COMMANDS[command] + args)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dpmcli: error: {flag}:"), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_custom_flow_sigmas_are_checked_against_what_the_network_knows_not_the_shifted_grid():
    """With a shift, a custom grid may still reach s = 0.002 (timestep 2); beyond s = 1 - 1/T unshifted it may not."""
    plan = build_plan(SolverConfig(process="flow", flow_shift=3.0, sigmas=(0.9, 0.5, 0.002, 0.0)))
    assert list(plan.timesteps) == pytest.approx([900.0, 500.0, 2.0])
    with pytest.raises(ConfigError, match=r"^--sigmas: 0.9995 lies outside"):
        build_plan(SolverConfig(process="flow", sigmas=(0.9995, 0.5, 0.0)))


def test_compat_flow_refuses_noise_prediction_with_one_consistent_reason():
    for final in ("zero", "sigma-min"):
        with pytest.raises(ConfigError, match="use dpmsolver\\+\\+ or sde-dpmsolver\\+\\+"):
            build_plan(SolverConfig(process="flow", algo="dpmsolver", compat="diffusers", final_sigma=final))
