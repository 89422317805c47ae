"""--compat k-diffusion and the ancestral methods against k-diffusion 0.1.1's own samplers.

k-diffusion's sampling module is run on the same mixture denoiser (exact posterior means), the same
sigmas, the same x_T and the same injected noise as dpmcli; every sampler and option agrees to
round-off, on vp, flow and edm. Its BrownianTreeNoiseSampler with a list of seeds gives the noise
of ``--noise k-diffusion``. Without the module (no network to fetch the wheel) these tests skip;
tests/test_ancestral.py checks the same methods against mathematics alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpmcli import SolverConfig, build_plan
from dpmcli.brownian import noise_source
from dpmcli.models import MixtureModel, ring
from dpmcli.sampler import sample
from kdiffusion_reference import load_sampling

# k-diffusion's own sampler queries its tree just past torchsde's rounded sigma_max, which warns
pytestmark = pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")

SAMPLERS = [
    ("sample_dpmpp_2m", dict(algo="dpmsolver++", order=2), {}),
    ("sample_dpmpp_2m_sde", dict(algo="sde-dpmsolver++", order=2), {"solver_type": "midpoint"}),
    ("sample_dpmpp_2m_sde", dict(algo="sde-dpmsolver++", order=2, solver_type="heun"), {"solver_type": "heun"}),
    ("sample_dpmpp_3m_sde", dict(algo="sde-dpmsolver++", order=3), {}),
    ("sample_euler_ancestral", dict(method="ancestral", order=1), {}),
    ("sample_dpmpp_2s_ancestral", dict(method="ancestral", order=2), {}),
    ("sample_dpmpp_sde", dict(method="singlestep", algo="sde-dpmsolver++", order=2), {}),
]
GRIDS = {"vp": dict(spacing="karras"), "flow": dict(flow_shift=3.0), "edm": dict(spacing="karras")}


@pytest.fixture(scope="module")
def kd(request):
    cache = request.config.cache.mkdir("k-diffusion") if request.config.cache is not None else Path("k-diffusion-cache")
    module, why = load_sampling(Path(cache))
    if module is None:
        pytest.skip(why)
    return module


def stochastic(options: dict) -> bool:
    return options.get("algo", "").startswith("sde-") or options.get("method") == "ancestral"


def run_both(kd, name, options, extra, *, process="vp", eta=1.0, s_noise=1.0, steps=12, batch=32):
    noise_options = dict(eta=eta, s_noise=s_noise) if stochastic(options) else {}
    cfg = SolverConfig(steps=steps, compat="k-diffusion", process=process, **GRIDS[process], **options, **noise_options)
    plan = build_plan(cfg)
    mixture = ring()
    x_T = torch.randn((batch, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    zs = torch.randn((max(plan.noise_draws, 1), batch, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = sample(plan, MixtureModel(mixture).bind(plan), x_T.clone(), noise=lambda i, like, scale: zs[i] * scale).samples
    sigmas = torch.tensor(plan.sigma_t / plan.alpha_t, dtype=torch.float64)
    calls = []

    def noise_sampler(sigma, sigma_next):  # the same z, draw by draw; the interval it asks for is recorded
        calls.append((float(sigma), float(sigma_next)))
        return zs[len(calls) - 1]

    def denoiser(x, sigma):
        return mixture.denoise(x, 1.0, float(sigma[0]))[0]

    kwargs = dict(extra, **({"eta": eta, "s_noise": s_noise, "noise_sampler": noise_sampler} if stochastic(options) else {}))
    theirs = getattr(kd, name)(denoiser, x_T.clone() / plan.alpha_t[0], sigmas, disable=True, **kwargs) * plan.alpha_t[-1]
    return ours, theirs, plan, calls


@pytest.mark.parametrize("name, options, extra", SAMPLERS, ids=[f"{n[7:]}-{e.get('solver_type', '')}" for n, _, e in SAMPLERS])
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.6, 0.8)])
def test_every_sampler_is_k_diffusions_step_for_step(kd, name, options, extra, eta, s_noise):
    if not stochastic(options) and (eta, s_noise) != (1.0, 1.0):
        pytest.skip("an ODE sampler has no eta")
    ours, theirs, plan, calls = run_both(kd, name, options, extra, eta=eta, s_noise=s_noise)
    noisy = sorted((row for row in plan.rows if row.noise_index >= 0), key=lambda row: row.noise_index)
    # every draw k-diffusion asks for is one of dpmcli's rows, over the same sigma interval (vp: the grid column is sigma)
    assert len(calls) == (len(noisy) if stochastic(options) else 0)
    np.testing.assert_allclose(np.reshape([row.noise_sigmas for row in noisy], (-1, 2)), np.reshape(calls, (-1, 2)), rtol=1e-14)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("process", ["flow", "edm"])
@pytest.mark.parametrize("name, options, extra", [SAMPLERS[3], SAMPLERS[5], SAMPLERS[6]], ids=["3m_sde", "2s_ancestral", "sde"])
def test_samplers_on_flow_and_edm_are_k_diffusions_in_sigma_space(kd, name, options, extra, process):
    ours, theirs, _, _ = run_both(kd, name, options, extra, process=process, eta=0.8)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("eta", [3.0, 5.0])
def test_a_large_eta_is_taken_as_k_diffusion_takes_it(kd, eta):
    # sigma_up reaches sigma_next and sigma_down is 0: 2S ancestral spends one call on such a step,
    # DPM-Solver++ SDE still calls the model at the midpoint and lands on its data prediction
    ours, theirs, plan, _ = run_both(kd, *SAMPLERS[5], eta=eta)
    assert plan.nfe < 2 * plan.steps - 1
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-11)
    ours, theirs, plan, _ = run_both(kd, *SAMPLERS[6], eta=eta)
    assert plan.nfe == 2 * plan.steps - 1
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-11)


def test_dpmcli_own_3m_sde_is_not_k_diffusions(kd):
    # the start-up differs at the second step (published midpoint weight against k-diffusion's phi_2)
    name, options, extra = SAMPLERS[3]
    plan = build_plan(SolverConfig(steps=12, spacing="karras", lower_order_final=False, **options))
    compat, theirs, _, _ = run_both(kd, name, options, extra)
    mixture = ring()
    x_T = torch.randn((32, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    zs = torch.randn((plan.noise_draws, 32, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    own = sample(plan, MixtureModel(mixture).bind(plan), x_T, noise=lambda i, like, scale: zs[i] * scale).samples
    assert float((own - theirs).abs().max()) > 1e-5 > float((compat - theirs).abs().max())


@pytest.mark.parametrize("name, options", [(SAMPLERS[1][0], SAMPLERS[1][1]), (SAMPLERS[6][0], SAMPLERS[6][1])])
def test_k_diffusion_noise_is_k_diffusions_brownian_tree_per_sample(kd, name, options):
    plan = build_plan(SolverConfig(steps=10, spacing="karras", compat="k-diffusion", **options))
    x = torch.zeros((3, 2), dtype=torch.float64)
    ours = noise_source("k-diffusion", 7, plan)
    sigmas = torch.tensor(plan.sigmas, dtype=torch.float64)
    theirs = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=[7, 8, 9])
    single = kd.BrownianTreeNoiseSampler(x[:1], sigmas[sigmas > 0].min(), sigmas.max(), seed=7)
    for row in plan.rows:
        if row.noise_index < 0:
            continue
        a, b = (torch.tensor(v, dtype=torch.float64) for v in row.noise_sigmas)
        expected = theirs(a, b)
        np.testing.assert_allclose(ours(row.noise_index, x, 1.0).numpy(), expected.numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(expected[:1].numpy(), single(a, b).numpy(), rtol=1e-12)  # seed 7 at batch 1 is ComfyUI's


def test_dpmpp_2m_sde_with_k_diffusion_noise_is_k_diffusions_sample_for_a_seed(kd):
    plan = build_plan(SolverConfig(steps=10, spacing="karras", compat="k-diffusion", algo="sde-dpmsolver++", eta=1.0))
    mixture = ring()
    x_T = torch.randn((4, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = sample(plan, MixtureModel(mixture).bind(plan), x_T.clone(), noise=noise_source("k-diffusion", 11, plan)).samples
    sigmas = torch.tensor(plan.sigmas, dtype=torch.float64)
    sampler = kd.BrownianTreeNoiseSampler(x_T, sigmas[sigmas > 0].min(), sigmas.max(), seed=[11, 12, 13, 14])
    theirs = kd.sample_dpmpp_2m_sde(lambda x, s: mixture.denoise(x, 1.0, float(s[0]))[0], x_T / plan.alpha_t[0], sigmas,
                                    disable=True, noise_sampler=sampler)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-11)
