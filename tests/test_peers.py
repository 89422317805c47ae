"""dpmcli.peers: diffusers' ODE schedulers stepped on dpmcli's models, checked against mathematics.

Euler (on x / alpha) and FlowMatch Euler are DDIM, i.e. DPM-Solver-1; UniPC's predictor with B(h) =
e^h - 1 and no corrector is DPM-Solver++(2M); EDM Euler is DPM-Solver-1 in sigma space; the DPMSolver
scheduler itself is what ``--compat diffusers`` reproduces. Each is run by dpmcli on the sigmas the
peer reports, from the same x_T, so every conversion (latent, model input, timestep, grid) is checked.
"""

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from dpmcli import DPMSolver  # noqa: E402
from dpmcli.config import SolverConfig  # noqa: E402
from dpmcli.errors import ConfigError  # noqa: E402
from dpmcli.experiment import solve  # noqa: E402
from dpmcli.models import MixtureModel, ring  # noqa: E402
from dpmcli.peers import MISSING, Peer, compare_peers, run_peer, sweep_peers  # noqa: E402
from dpmcli.reference import ode_limit  # noqa: E402

FLOW = {"process": "flow", "prediction_type": "flow_prediction"}
EDM = {"process": "edm", "spacing": "karras"}
ROUND_OFF = 2e-5  # float32 arithmetic on both sides, |x| ~ 1


def setup(batch=64, **options):
    """(cfg, bound ring model, x_T) for a config given by SolverConfig's names."""
    solver = DPMSolver(**options)
    denoise = MixtureModel(ring()).bind(solver.plan)
    return solver.config, denoise, solver.initial_latents((batch, 2))


def inside(sigmas, cfg):
    """The peer's sigmas for a dpmcli custom grid: diffusers' float32 table puts its top sigma a few ulps
    above dpmcli's float64 one, which dpmcli refuses as outside the schedule."""
    top = float(np.max(DPMSolver(**{k: getattr(cfg, k) for k in ("process", "prediction_type")}).plan.schedule.sigmas))
    return tuple(min(float(s), top) for s in sigmas)


def largest(a, b):
    return (a.double() - b.double()).abs().max().item()


def test_euler_is_dpm_solver_1_on_its_sigmas():
    cfg, denoise, x_T = setup()
    run = run_peer(Peer("EulerDiscreteScheduler", {}, 10), cfg, denoise, x_T)
    assert run.nfe == 10 and run.sigmas.dtype == np.float64 and len(run.sigmas) == 11 and run.sigmas[-1] == 0
    ours, _ = solve(ring(), x_T, algo="dpmsolver++", order=1, spacing="custom", sigmas=inside(run.sigmas, cfg))
    assert run.samples.dtype == x_T.dtype
    assert largest(run.samples, ours) < ROUND_OFF


def test_dpmsolver_multistep_peer_is_compat_diffusers():
    cfg, denoise, x_T = setup(steps=10)
    peer = Peer("DPMSolverMultistepScheduler", {"solver_order": 2, "solver_type": "midpoint", "algorithm_type": "dpmsolver++"}, 10)
    run = run_peer(peer, cfg, denoise, x_T)
    ours, plan = solve(ring(), x_T, compat="diffusers", order=2, solver_type="midpoint", steps=10)
    np.testing.assert_allclose(run.sigmas, plan.sigmas, rtol=1e-6)
    assert largest(run.samples, ours) < 1e-5


def test_flow_dpmsolver_peer_is_compat_diffusers():
    """use_flow_sigmas: diffusers' flow grid and its int64 timesteps, as --compat diffusers reproduces them."""
    cfg, denoise, x_T = setup(flow_shift=3.0, **FLOW)
    run = run_peer(Peer("DPMSolverMultistepScheduler", {"solver_order": 2}, 10), cfg, denoise, x_T)
    ours, _ = solve(ring(), x_T, compat="diffusers", order=2, steps=10, flow_shift=3.0, **FLOW)
    assert largest(run.samples, ours) < 1e-5


def test_unipc_predictor_is_dpm_solver_pp_2m_and_the_corrector_helps():
    steps = 10
    cfg, denoise, x_T = setup()
    words = {"solver_order": 2, "solver_type": "bh2"}
    plain = run_peer(Peer("UniPCMultistepScheduler", {**words, "disable_corrector": list(range(steps))}, steps), cfg, denoise, x_T)
    ours, _ = solve(ring(), x_T, algo="dpmsolver++", order=2, solver_type="midpoint", spacing="custom", sigmas=inside(plain.sigmas, cfg))
    assert largest(plain.samples, ours) < ROUND_OFF
    corrected = run_peer(Peer("UniPCMultistepScheduler", words, steps), cfg, denoise, x_T)
    np.testing.assert_array_equal(corrected.sigmas, plain.sigmas)
    exact = ode_limit(ring(), x_T.double(), -math.log(plain.sigmas[0]), math.inf).float()
    error = lambda run: (run.samples - exact).norm(dim=1).mean().item()  # noqa: E731
    assert error(corrected) < error(plain)


def test_flow_match_euler_is_dpm_solver_1_on_its_sigmas():
    cfg, denoise, x_T = setup(**FLOW)
    (peer,) = [p for p in compare_peers(cfg, 10) if p.scheduler == "FlowMatchEulerDiscreteScheduler"]
    run = run_peer(peer, cfg, denoise, x_T)
    sigmas = run.sigmas
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    # FlowMatch starts at s = 1 (pure noise), outside dpmcli's grids: its first step by hand, DDIM from s = 1
    # (x0 = x - s v there), then dpmcli's DPM-Solver-1 on the rest of the peer's sigmas
    x0 = x_T - denoise(x_T, 1000.0)
    x1 = sigmas[1] * x_T + (1.0 - sigmas[1]) * x0
    ours, _ = solve(ring(), x1, algo="dpmsolver++", order=1, spacing="custom", sigmas=tuple(sigmas[1:]), **FLOW)
    assert largest(run.samples, ours) < ROUND_OFF


def test_edm_euler_is_dpm_solver_1_on_its_sigmas():
    cfg, denoise, x_T = setup(**EDM)
    (peer,) = compare_peers(cfg, 10)
    assert peer.label == "diffusers EDM Euler karras"
    run = run_peer(peer, cfg, denoise, x_T)
    ours, _ = solve(ring(), x_T, algo="dpmsolver++", order=1, process="edm", spacing="custom", sigmas=tuple(run.sigmas))
    assert largest(run.samples, ours) < ROUND_OFF  # samples ~1, from x_T ~80


def counted(peers, cfg, denoise, x_T):
    for peer in peers:
        run = run_peer(peer, cfg, denoise, x_T)
        assert run.nfe == peer.nfe, peer.label
        assert len(run.sigmas) == peer.steps + 1, peer.label
        assert torch.isfinite(run.samples).all(), peer.label


@pytest.mark.parametrize("options", [{}, FLOW, EDM], ids=["vp", "flow", "edm"])
def test_counted_calls_are_the_peers_nfe(options):
    cfg, denoise, x_T = setup(batch=8, **options)
    for nfe in (9, 10):
        peers = compare_peers(cfg, nfe)
        assert all(p.nfe <= nfe for p in peers) and all(p.label.startswith("diffusers ") for p in peers)
        heuns = [p for p in peers if "Heun" in p.scheduler]
        assert all(p.nfe == 2 * p.steps - 1 == 2 * ((nfe + 1) // 2) - 1 for p in heuns)
        counted(peers, cfg, denoise, x_T)
    counted(sweep_peers(cfg, 6)[::7], cfg, denoise, x_T)


def test_compare_peers_of_the_defaults():
    peers = compare_peers(SolverConfig(), 10)
    assert [p.label for p in peers] == [
        "diffusers UniPC bh1 order 2 sigma-min end", "diffusers UniPC bh2 order 2", "diffusers DEIS order 2",
        "diffusers Euler", "diffusers Heun",
    ]
    assert [p.nfe for p in peers] == [10, 10, 10, 10, 9]
    assert "NaN" in peers[0].note and "DEIS" in peers[2].note and not peers[1].note
    labels = [p.label for p in compare_peers(SolverConfig(order=3, spacing="karras"), 10)]
    assert "diffusers DEIS order 3 karras" in labels and "diffusers UniPC bh2 order 3 karras" in labels
    (unipc, *_) = compare_peers(SolverConfig(spacing="time-quadratic"), 10)
    assert "time-quadratic" in unipc.note and "time-quadratic" not in unipc.label


def one_line(excinfo):
    message = str(excinfo.value)
    assert message.startswith("--peers: diffusers: ") and "\n" not in message
    return message


def test_refusals_are_one_line():
    cfg, denoise, x_T = setup(batch=2)
    for peer in (
        Peer("EulerAncestralDiscreteScheduler", {}, 5),
        Peer("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 5),
        Peer("EulerDiscreteScheduler", {"use_lu_lambdas": True}, 5),
    ):
        with pytest.raises(ConfigError) as excinfo:
            run_peer(peer, cfg, denoise, x_T)
        one_line(excinfo)
    edm, denoise_edm, x_edm = setup(batch=2, **EDM)
    with pytest.raises(ConfigError) as excinfo:
        run_peer(Peer("UniPCMultistepScheduler", {}, 5), edm, denoise_edm, x_edm)
    assert "--process edm" in one_line(excinfo)
    with pytest.raises(ConfigError) as excinfo:
        compare_peers(cfg, 0)
    one_line(excinfo)


def test_missing_diffusers(monkeypatch):
    cfg, denoise, x_T = setup(batch=2)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    for call in (lambda: compare_peers(cfg, 10), lambda: sweep_peers(cfg, 10),
                 lambda: run_peer(Peer("EulerDiscreteScheduler", {}, 5), cfg, denoise, x_T)):
        with pytest.raises(ConfigError) as excinfo:
            call()
        assert one_line(excinfo) == MISSING


def test_every_swept_configuration_runs(capsys):
    cfg, denoise, x_T = setup(batch=4)
    peers = sweep_peers(cfg, 5)
    rng = torch.get_rng_state()
    for peer in peers:
        run = run_peer(peer, cfg, denoise, x_T)
        assert run.nfe == 5 and torch.isfinite(run.samples).all(), peer.label
    assert torch.equal(rng, torch.get_rng_state())  # ODE schedulers only: torch's generator is never drawn from
    assert len(set(peers)) == len(peers)
    assert len(sweep_peers(cfg, 10)) == len(peers)
    with capsys.disabled():
        print(f"\nsweep_peers(SolverConfig(), 5): {len(peers)} configurations")
