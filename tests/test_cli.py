"""The command line: exit codes, output shapes, files written, determinism, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from dpmcli.cli.main import app

runner = CliRunner()
STEP_KEYS = {"step", "timestep", "sigma", "alpha_t", "sigma_t", "lambda", "h", "order", "evaluations"}
SAMPLE_STEP_KEYS = (STEP_KEYS - {"evaluations"}) | {"stage", "mean", "std", "min", "max", "norm", "x0_mean", "x0_std", "nonfinite"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code, option=None):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dpmcli: error:")
    assert "Traceback" not in result.stderr and result.stdout == ""
    if option:
        assert option in lines[0]


def test_schedule_json_shape():
    result = invoke("schedule", "--steps", 7, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"config", "sigmas", "steps"} <= set(doc)
    assert len(doc["sigmas"]) == 8 and doc["sigmas"][-1] == 0.0
    assert len(doc["steps"]) == 7 and all(set(s) == STEP_KEYS for s in doc["steps"])
    assert doc["steps"][-1]["h"] is None  # the step to sigma 0 has h = inf, written as null
    assert doc["config"]["algo"] == "dpmsolver++" and doc["config"]["steps"] == 7


def test_schedule_csv_and_table():
    result = invoke("schedule", "--steps", 4, "--format", "csv", "--spacing", "karras")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "step,timestep,sigma,alpha_t,sigma_t,lambda,h,order,evaluations" and len(lines) == 5
    table = invoke("schedule", "--steps", 4, "--order", 3)
    assert table.exit_code == 0 and "timestep" in table.stdout and "converges at order 2" in table.stdout


def test_schedule_shows_order_plan_of_exact_coefficients():
    doc = json.loads(invoke("schedule", "--order", 3, "--coefficients", "exact", "--steps", 20, "-f", "json").stdout)
    assert [s["order"] for s in doc["steps"]][:4] == [1, 2, 3, 3]
    assert doc["convergence_order"] == 3


def test_sample_json_is_the_only_stdout():
    result = invoke("sample", "--steps", 5, "--batch", 64, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"config", "sigmas", "steps", "nfe", "seconds", "final", "mixture"} <= set(doc)
    assert doc["nfe"] == 5 and len(doc["steps"]) == 5 and len(doc["sigmas"]) == 6
    assert all(SAMPLE_STEP_KEYS <= set(s) for s in doc["steps"])
    assert doc["config"]["batch"] == 64 and doc["config"]["model"] == "ring"
    assert doc["mixture"]["component_weights"] == [0.125] * 8


def test_sample_table_has_statistics_and_summary():
    result = invoke("sample", "--steps", 6, "--batch", 128)
    assert result.exit_code == 0
    for word in ("x0 mean", "Final samples", "log-likelihood", "component"):
        assert word in result.stdout


@pytest.mark.parametrize("algo", ["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_algorithm_and_order_runs(algo, order, tmp_path):
    out = tmp_path / "x.npy"
    result = invoke("sample", "--algo", algo, "--order", order, "--steps", 8, "--batch", 32, "-f", "json", "--save", out)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["nfe"] == 8 and max(s["order"] for s in doc["steps"]) == order
    samples = np.load(out)
    assert samples.shape == (32, 2) and np.all(np.isfinite(samples))
    # The samples land near the ring (radius 1) whatever the solver.
    assert abs(np.linalg.norm(samples, axis=1).mean() - 1.0) < 0.35


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    args = ["sample", "--algo", "sde-dpmsolver++", "--steps", 6, "--batch", 50, "-f", "json"]
    first = invoke(*args, "--save", a)
    second = invoke(*args, "--save", b)
    invoke(*args, "--save", c, "--seed", 1)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    d1, d2 = json.loads(first.stdout), json.loads(second.stdout)
    d1.pop("seconds"), d2.pop("seconds")
    assert d1 == d2


def test_x_init_and_noise_files(tmp_path):
    x_init = tmp_path / "x.npy"
    np.save(x_init, np.random.default_rng(0).normal(size=(10, 2)))
    noise = tmp_path / "z.npy"
    np.save(noise, np.random.default_rng(1).normal(size=(4, 10, 2)))
    args = ["sample", "--algo", "sde-dpmsolver++", "--steps", 4, "--x-init", x_init, "-f", "json"]
    a = json.loads(invoke(*args, "--noise", noise, "--seed", 0).stdout)
    b = json.loads(invoke(*args, "--noise", noise, "--seed", 7).stdout)
    c = json.loads(invoke(*args, "--seed", 0).stdout)
    assert a["final"] == b["final"] != c["final"]  # the file's noise replaces the seeded noise
    assert a["steps"][0]["mean"] == pytest.approx(np.load(x_init).mean())
    np.save(noise, np.zeros((5, 10, 2)))
    one_line_error(invoke(*args, "--noise", noise), 2, "--noise")
    np.save(x_init, np.zeros((10, 3)))
    one_line_error(invoke(*args), 2, "--x-init")
    one_line_error(invoke("sample", "--x-init", tmp_path / "missing.npy"), 2, "--x-init")
    np.save(x_init, np.zeros((10, 2)))
    one_line_error(invoke("sample", "--x-init", x_init, "--batch", 3), 2, "--batch")


@pytest.mark.parametrize(
    "args, option",
    [
        (["sample", "--algo", "ddpm"], "--algo"),
        (["sample", "--order", 0], "--order"),
        (["sample", "--order", 9], "--order"),
        (["sample", "--order", 5, "--steps", 3], "--order"),
        (["sample", "--method", "singlestep", "--order", 4], "--order"),
        (["sample", "--method", "adaptive", "--algo", "sde-dpmsolver++"], "--method"),
        (["sample", "--method", "euler"], "--method"),
        (["sample", "--method", "adaptive", "--atol", 0], "--atol"),
        (["sample", "--nfe", 10], "--nfe"),
        (["sample", "--steps", 0], "--steps"),
        (["sample", "--steps", 2000], "--steps"),
        (["sample", "--spacing", "cosine"], "--spacing"),
        (["sample", "--device", "cuda"], "--device"),
        (["sample", "--device", "tpu"], "--device"),
        (["sample", "--dtype", "float8"], "--dtype"),
        (["sample", "--format", "yaml"], "--format"),
        (["sample", "--model", "moons"], "--model"),
        (["sample", "--batch", 0], "--batch"),
        (["sample", "--sigmas", "3,2,1,0", "--steps", 5], "--steps"),
        (["sample", "--sigmas", "3,abc"], "--sigmas"),
        (["sample", "--compat", "diffusers", "--algo", "dpmsolver"], "--compat"),
        (["schedule", "--format", "xml"], "--format"),
        (["schedule", "--trained-betas", "/nonexistent/betas.npy"], "--trained-betas"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, option, tmp_path):
    save = tmp_path / "out.npy"
    result = invoke(*args, *(["--save", save] if args[0] == "sample" else []))
    one_line_error(result, 2, option)
    assert not save.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_save_is_refused_before_running(tmp_path):
    one_line_error(invoke("sample", "--save", tmp_path / "nope" / "x.npy"), 2, "--save")
    one_line_error(invoke("sample", "--save", tmp_path / "x.txt"), 2, "--save")


def test_numerical_failure_exits_3_and_writes_nothing(tmp_path):
    x_init = tmp_path / "huge.npy"  # (an absurd mixture is refused up front: test_compare_edges.py)
    np.save(x_init, np.full((8, 2), 3e38, dtype=np.float32))
    save = tmp_path / "x.npy"
    result = invoke("sample", "--x-init", x_init, "--steps", 5, "--save", save)
    one_line_error(result, 3)
    assert "step 0" in result.stderr and "NaN or Inf" in result.stderr
    assert not save.exists()


def test_float16_and_float64_runs():
    for dtype in ("float64", "float16", "bfloat16"):
        result = invoke("sample", "--dtype", dtype, "--steps", 5, "--batch", 16, "-f", "json")
        assert result.exit_code == 0, (dtype, result.stderr)
        assert json.loads(result.stdout)["config"]["dtype"] == dtype


def test_gmm64_and_custom_model(tmp_path):
    result = invoke("sample", "--model", "gmm64", "--steps", 6, "--batch", 32, "-f", "json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["mixture"]["component_shares"]) == 10
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"weights": [1, 1], "means": [[-1], [1]], "stds": [0.2, 0.2]}))
    result = invoke("sample", "--model", f"gmm:{path}", "--steps", 6, "--batch", 32, "-f", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)["final"]["nonfinite"] == 0


def test_help_documents_exit_codes_and_python_m_works():
    assert "Exit codes" in invoke("--help").stdout
    assert "3 numerical failure" in invoke("sample", "--help").stdout
    proc = subprocess.run([sys.executable, "-m", "dpmcli", "schedule", "--steps", "3", "-f", "csv"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 4
