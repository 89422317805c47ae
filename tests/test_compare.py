"""dpmcli compare: sweeps, ground truth, fitted orders, gates and output formats."""

import json

import matplotlib.image
import pytest
from typer.testing import CliRunner

from dpmcli import SolverConfig
from dpmcli.cli.main import app
from dpmcli.compare import Sweep, expand, run_sweep
from dpmcli.gates import check_gates

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ode_report(tmp_path_factory):
    """Exact-weight ODE solvers on a logsnr grid: orders 1, 2, 3 and the published order 3."""
    sweep = Sweep(
        base=SolverConfig(spacing="logsnr", final_sigma="sigma-min", lower_order_final=False),
        values={"algo": ["dpmsolver++", "dpmsolver"], "order": [1, 2, 3], "steps": [20, 40, 80, 160], "coefficients": ["exact", "published"]},
        batch=256, dtype="float64", cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return run_sweep(sweep)


def test_fitted_orders_of_exact_and_published_weights(ode_report):
    fitted = {(o["algo"], o["order"], o["coefficients"]): o["fitted_order"] for o in ode_report.orders}
    for algo in ("dpmsolver++", "dpmsolver"):
        for order in (1, 2, 3):
            assert abs(fitted[(algo, order, "exact")] - order) < 0.3, (algo, order, fitted)
        assert abs(fitted[(algo, 3, "published")] - 2.0) < 0.3, (algo, fitted)


def test_identical_runs_are_listed_not_repeated(ode_report):
    # order 1 is the same update with either coefficient form
    reasons = [s["reason"] for s in ode_report.skipped]
    assert sum("identical to" in r for r in reasons) == 2 * 4
    assert len(ode_report.runs) == 2 * 5 * 4


def test_runs_are_sorted_and_best_marked(ode_report):
    errors = [r["error"] for r in ode_report.runs]
    assert errors == sorted(errors)
    for nfe in {r["nfe"] for r in ode_report.runs}:
        at = [r for r in ode_report.runs if r["nfe"] == nfe]
        best = [r for r in at if r["best_at_nfe"]]
        assert len(best) == 1 and best[0]["error"] == min(r["error"] for r in at)


def test_reference_is_cached_on_disk(tmp_path):
    sweep = Sweep(values={"algo": ["dpmsolver++"], "order": [2], "steps": [5, 10]}, batch=64, cache_dir=tmp_path)
    first = run_sweep(sweep)
    assert first.reference["cache_misses"] == 1 and first.reference["cache_hits"] == 0
    assert len(list(tmp_path.glob("ode-*.npy"))) == 1
    second = run_sweep(sweep)
    assert second.reference["cache_hits"] == 1 and second.reference["cache_misses"] == 0
    assert [r["error"] for r in first.runs] == [r["error"] for r in second.runs]
    changed = run_sweep(Sweep(values=sweep.values, batch=64, seed=1, cache_dir=tmp_path))
    assert changed.reference["cache_misses"] == 1  # a new x_T is a new key


def test_sde_runs_share_one_path_and_converge(tmp_path):
    sweep = Sweep(
        base=SolverConfig(spacing="logsnr", final_sigma="sigma-min", lower_order_final=False),
        values={"algo": ["sde-dpmsolver++"], "order": [1], "steps": [25, 50, 100, 200]},
        batch=256, dtype="float64", reference_steps=800, cache_dir=tmp_path,
    )
    report = run_sweep(sweep)
    strong = {r["steps"]: r["strong_error"] for r in report.runs}
    assert strong[200] < strong[100] < strong[50] < strong[25]
    (order,) = report.orders
    assert order["metric"] == "strong_error" and order["fitted_order"] > 0.4
    assert all(r["error_metric"] == "mmd2" and r["mmd2"] is not None for r in report.runs)


def test_invalid_combinations_are_skipped_with_a_reason():
    sweep = Sweep(values={"algo": ["dpmsolver", "dpmsolver++"], "order": [2], "steps": [5], "compat": ["diffusers"]}, batch=8, cache_dir=None)
    planned, skipped = expand(sweep)
    assert [p.key["algo"] for p in planned] == ["dpmsolver++"]
    assert "diffusers refuses" in skipped[0]["reason"]


def test_gates(ode_report):
    worst = max(r["error"] for r in ode_report.runs)
    assert check_gates(ode_report, max_error=worst * 1.01)[0] == []
    failures, _ = check_gates(ode_report, max_error=worst / 2)
    assert failures and all("--max-error" in f for f in failures)
    baseline = {"runs": [dict(r) for r in ode_report.runs]}
    assert check_gates(ode_report, baseline=baseline, tolerance=0.1)[0] == []
    target = baseline["runs"][-1]
    target["error"] = target["error"] / 1.5  # the baseline was 50% better on one run
    failures, _ = check_gates(ode_report, baseline=baseline, tolerance=0.1)
    assert len(failures) == 1 and target["run"] in failures[0] and "+50.0%" in failures[0]
    baseline["runs"].pop(0)
    _, notes = check_gates(ode_report, baseline=baseline)
    assert any("not in the baseline" in n for n in notes)
    failures, _ = check_gates(ode_report, min_order=2.5)
    assert any("order 1" in f for f in failures) and any("order 2" in f for f in failures)
    assert not any("order 3 exact" in f for f in failures)


SMALL = ["compare", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2", "--steps", "5,10", "--batch", 128]


def test_cli_formats_and_out_dir(tmp_path):
    cache = ["--cache-dir", tmp_path / "cache"]
    result = invoke(*SMALL, *cache, "-f", "json", "--out", tmp_path / "out", "--plot", tmp_path / "err.svg")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"config", "runs", "orders", "skipped", "reference", "gates"} <= set(doc)
    assert len(doc["runs"]) == 8 and all(r["nfe"] == r["steps"] for r in doc["runs"])
    assert doc["reference"]["bandwidth"] > 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "error_vs_nfe.png", "results.csv", "results.json", "samples.png", "summary.md"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"] == doc["runs"]
    assert (tmp_path / "err.svg").read_bytes().startswith(b"<?xml")
    for name in ("error_vs_nfe.png", "samples.png"):
        height, width, _ = matplotlib.image.imread(tmp_path / "out" / name).shape
        assert width > 800 and height > 500
    csv = invoke(*SMALL, *cache, "-f", "csv")
    assert csv.stdout.splitlines()[0].startswith("run,solver,algo,order") and len(csv.stdout.splitlines()) == 9
    md = invoke(*SMALL, *cache, "-f", "markdown")
    assert md.stdout.startswith("# dpmcli compare") and "| solver |" in md.stdout
    table = invoke(*SMALL, *cache)
    assert "Empirical convergence order" in table.stdout and "★" in table.stdout
    # same seed, same table
    again = json.loads(invoke(*SMALL, *cache, "-f", "json").stdout)
    strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in d["runs"]]
    assert strip(again) == strip(doc)


def test_cli_gates_exit_codes(tmp_path):
    cache = ["--cache-dir", tmp_path / "cache"]
    base = invoke(*SMALL, *cache, "--out", tmp_path / "base", "-q")
    assert base.exit_code == 0
    assert invoke(*SMALL, *cache, "--baseline", tmp_path / "base" / "results.json", "-q").exit_code == 0
    failed = invoke(*SMALL, *cache, "--max-error", 1e-12, "-q")
    assert failed.exit_code == 1 and "FAIL" in failed.stderr and "--max-error" in failed.stderr
    seeded = invoke(*SMALL, *cache, "--seed", 3, "--baseline", tmp_path / "base" / "results.json", "--tolerance", 0.0, "-q")
    assert seeded.exit_code in (0, 1)  # another x_T: some runs may be worse; the gate decides, never a crash
    assert invoke(*SMALL, *cache, "--min-order", 10, "-q").exit_code == 1


@pytest.mark.parametrize(
    "args, option",
    [
        (["--algo", "dpmsolver", "--compat", "diffusers", "--final-sigma", "zero"], "compare"),
        (["--format", "yaml"], "--format"),
        (["--order", "x"], "--order"),
        (["--baseline", "/nonexistent/results.json"], "--baseline"),
        (["--tolerance", "-1"], "--tolerance"),
        (["--plot", "err.gif"], "--plot"),
    ],
)
def test_cli_usage_errors(args, option, tmp_path):
    result = invoke("compare", "--steps", 5, "--batch", 8, "--cache-dir", tmp_path, *args)
    assert result.exit_code == 2, result.stderr
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_methods_in_a_sweep(tmp_path):
    sweep = Sweep(
        base=SolverConfig(spacing="logsnr", final_sigma="sigma-min"),
        values={"algo": ["dpmsolver++"], "order": [2, 3], "steps": [8, 16], "method": ["multistep", "singlestep", "adaptive"]},
        batch=64, dtype="float64", cache_dir=tmp_path,
    )
    report = run_sweep(sweep)
    by_method = {}
    for row in report.runs:
        by_method.setdefault(row["method"], []).append(row)
    assert len(by_method["adaptive"]) == 2  # one per order: adaptive runs pick their own steps
    assert all(r["nfe"] == r["steps"] * r["order"] for r in by_method["singlestep"])
    assert all(r["nfe"] == r["steps"] for r in by_method["multistep"])
    assert sum("identical to" in s["reason"] for s in report.skipped) == 2


def test_reference_steps_beyond_the_training_steps_name_the_number():
    from typer.testing import CliRunner

    from dpmcli.cli.main import app

    result = CliRunner().invoke(app, ["compare", "--train-steps", "500", "--steps", "5", "-q"])
    assert result.exit_code == 2
    assert "--reference-steps: 1000 is more than --train-steps (500)" in result.stderr
