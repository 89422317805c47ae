"""Edge cases found in review: each once gave a wrong result, a traceback or a silent surprise."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dpmcli import ConfigError, DPMSolver, SolverConfig, build_plan
from dpmcli.cli.main import app
from dpmcli.compare import Sweep, run_sweep
from dpmcli.gates import check_gates
from dpmcli.experiment import solve
from dpmcli.models.mixture import GaussianMixture

runner = CliRunner()
SMALL = GaussianMixture("small", np.array([0.5, 0.5]), np.array([[-0.3, 0.1], [0.3, -0.1]]), np.array([[0.05, 0.05], [0.05, 0.05]]))


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("options", [dict(method="singlestep", order=3), dict(method="singlestep", order=3, nfe=10), dict(order=3)])
def test_thresholding_that_clips_nothing_changes_nothing(algo, options):
    """|x0| < 1 here, so thresholding (s clamped to 1) is the identity: any difference is a history bug."""
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain, _ = solve(SMALL, x_T, algo=algo, steps=6, final_sigma="sigma-min", **options)
    clipped, _ = solve(SMALL, x_T, algo=algo, steps=6, final_sigma="sigma-min", thresholding=True, **options)
    torch.testing.assert_close(plain, clipped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spacing", ["karras", "exponential", "beta"])
def test_one_step_sigma_grids_start_at_sigma_max(spacing):
    plan = build_plan(SolverConfig(spacing=spacing, steps=1))
    assert plan.sigmas[0] == pytest.approx(plan.schedule.sigmas[-1]) and plan.sigmas[-1] == 0.0


def test_repeated_final_sigmas_leave_one_step():
    plan = build_plan(SolverConfig(sigmas=(10.0, 1.0, 1.0, 1.0)))
    assert list(plan.sigmas) == [10.0, 1.0] and plan.warnings
    result = runner.invoke(app, ["schedule", "--sigmas", "10,1,1,1", "-f", "json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)["steps"]) == 1


def test_adaptive_refuses_what_it_cannot_honour():
    with pytest.raises(ConfigError, match="--thresholding"):
        build_plan(SolverConfig(method="adaptive", thresholding=True))
    with pytest.raises(ConfigError, match="--sigmas"):
        build_plan(SolverConfig(method="adaptive", sigmas=(10.0, 1.0, 0.0)))
    with pytest.raises(ConfigError, match="adaptive"):
        DPMSolver(method="adaptive")


@pytest.mark.parametrize("nfe", [2, 5, 19, 20, 21])
@pytest.mark.parametrize("order", [2, 3])
def test_nfe_budget_is_exact_with_final_sigma_zero(nfe, order):
    plan = build_plan(SolverConfig(method="singlestep", order=order, nfe=nfe))
    assert plan.nfe == nfe and plan.orders[-1] == 1


def test_custom_sigmas_validate_twice():
    cfg = SolverConfig(sigmas=(10.0, 1.0, 0.5), method="singlestep", order=2, nfe=4)
    assert build_plan(cfg).nfe == 4


def test_trailing_spacing_with_clipping_keeps_the_step_count():
    plan = build_plan(SolverConfig(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-2.0, spacing="trailing", steps=20))
    assert plan.steps == 20 and plan.lambdas[0] >= -2.0 - 1e-9


def test_baseline_gate_with_negative_mmd():
    report = run_sweep(Sweep(values={"algo": ["sde-dpmsolver++"], "order": [1], "steps": [10]}, batch=64, reference_steps=50, cache_dir=None))
    row = dict(report.runs[0])
    row["error"] = -1e-5
    # "worse" is measured against the size of the baseline value, which may be negative
    report.runs[0]["error"] = -1.05e-5
    assert check_gates(report, baseline={"runs": [row]}, tolerance=0.1)[0] == []
    report.runs[0]["error"] = -0.95e-5  # within 10% of |baseline|
    assert check_gates(report, baseline={"runs": [row]}, tolerance=0.1)[0] == []
    report.runs[0]["error"] = 2e-5
    (failure,) = check_gates(report, baseline={"runs": [row]}, tolerance=0.1)[0]
    assert "+300.0%" in failure


@pytest.mark.parametrize(
    "args, option",
    [
        (["--algo", "dpmsolver++,sde-dpmslver++"], "--algo"),
        (["--spacing", "karas,linspace"], "--spacing"),
        (["--train-steps", "500", "--algo", "sde-dpmsolver++"], "--reference-steps"),
        (["--bandwidth", "inf"], "--bandwidth"),
        (["--tolerance", "nan"], "--tolerance"),
        (["--min-order", "nan"], "--min-order"),
    ],
)
def test_compare_usage_errors_before_any_work(args, option, tmp_path):
    result = runner.invoke(app, ["compare", "--steps", "5", "--batch", "8", "--cache-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.stderr
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_malformed_baseline_is_a_usage_error(tmp_path):
    bad = tmp_path / "results.json"
    for content in ('{"runs": [1, 2]}', '{"runs": [{"run": "x", "error": "big"}]}', "[]"):
        bad.write_text(content)
        result = runner.invoke(app, ["compare", "--steps", "5", "--batch", "8", "--baseline", str(bad)])
        assert result.exit_code == 2 and "--baseline" in result.stderr


def test_bad_files_are_usage_errors(tmp_path):
    strings = tmp_path / "s.npy"
    np.save(strings, np.array(["a", "b", "c"]))
    for args in (["--sigmas", str(strings)], ["--trained-betas", str(strings)], ["--trained-betas", str(tmp_path / "none.txt")]):
        result = runner.invoke(app, ["schedule", *args])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    noise = tmp_path / "z.npy"
    np.save(noise, np.full((3, 4, 2), "x"))
    result = runner.invoke(app, ["sample", "--algo", "sde-dpmsolver++", "--steps", "3", "--batch", "4", "--noise", str(noise)])
    assert result.exit_code == 2 and "--noise" in result.stderr
    empty = tmp_path / "m.json"
    empty.write_text(json.dumps({"weights": [1], "means": [[]], "stds": [1]}))
    result = runner.invoke(app, ["sample", "--model", f"gmm:{empty}"])
    assert result.exit_code == 2 and "--model" in result.stderr


def test_adaptive_half_precision_and_stuck_controller():
    plan = build_plan(SolverConfig(method="adaptive", order=2, final_sigma="sigma-min"))
    from dpmcli.adaptive import sample_adaptive
    from dpmcli.models import MixtureModel, ring

    model = MixtureModel(ring(), plan.schedule)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    result = sample_adaptive(plan, model, x)
    assert result.samples.dtype == torch.bfloat16 and torch.isfinite(result.samples.float()).all()
