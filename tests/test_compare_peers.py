"""compare --peers diffusers: diffusers' schedulers as rows of the same sweep, scored on the same x_T."""

import json

import pytest
from test_cli_edges import invoke, one_line_error

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    result = invoke("compare", "--peers", "diffusers", "--algo", "dpmsolver++", "--order", "1,2", "--steps", 6, "--batch", 256,
                    "--final-sigma", "sigma-min", "--cache-dir", cache, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_peer_rows_are_labelled_and_scored(report):
    peers = [r for r in report["runs"] if r.get("peer")]
    labels = {r["peer"] for r in peers}
    for wanted in ("diffusers Euler", "diffusers Heun", "diffusers UniPC bh1 order 2", "diffusers UniPC bh2 order 2", "diffusers DEIS order 2"):
        assert any(label.startswith(wanted) for label in labels), (wanted, labels)
    assert all(r["status"] == "ok" and r["error"] > 0 and r["run"].startswith("diffusers ") for r in peers)
    heun = next(r for r in peers if r["peer"] == "diffusers Heun")
    assert heun["nfe"] == 5 and heun["steps"] == 3  # 2N - 1 calls within the sweep's 6


def test_first_order_peer_scores_as_dpm_solver_1(report):
    """DEIS order 1 is DDIM, DPM-Solver-1: on the same integer linspace grid and x_T the errors agree to float32
    (Euler's linspace grid has fractional timesteps: another grid)."""
    deis = next(r for r in report["runs"] if r.get("peer") == "diffusers DEIS order 1")
    ours = next(r for r in report["runs"] if not r.get("peer") and r["order"] == 1)
    assert deis["error"] == pytest.approx(ours["error"], rel=1e-4)
    euler = next(r for r in report["runs"] if r.get("peer", "").startswith("diffusers Euler"))
    assert abs(euler["error"] - ours["error"]) > 1e-3 * ours["error"]


def test_baseline_keys_keep_peers_apart(report, tmp_path):
    from dpmcli.gates import _baseline_key  # noqa: PLC2701 - the key is what this checks

    keys = [_baseline_key(r) for r in report["runs"]]
    assert len(keys) == len(set(keys))


def test_bad_peers_value_is_one_line():
    one_line_error(invoke("compare", "--peers", "comfyui", "--steps", 5), 2, "--peers: 'comfyui' is not allowed")


def test_peers_are_reported_not_gated(tmp_path):
    result = invoke("compare", "--peers", "diffusers", "--algo", "dpmsolver++", "--order", 2, "--steps", 5, "--batch", 128,
                    "--max-error", 0.2299, "--cache-dir", tmp_path, "--format", "json")
    document = json.loads(result.stdout)
    failures = document["gates"]["failures"]
    assert all("diffusers" not in f for f in failures)
    assert any("--peers row(s) are reported, not gated" in n for n in document["gates"]["notes"])


def test_corrected_runs_have_their_own_baseline_key():
    from dpmcli.gates import _baseline_key  # noqa: PLC2701

    row = {"run": "a", "algo": "dpmsolver++", "order": 2, "steps": 5}
    assert _baseline_key(row) != _baseline_key({**row, "corrector": "unic"})
