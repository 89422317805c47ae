"""Bad input and faults around `dpmcli compare`: mixture files, the reference cache, gates, grids, outputs.

Every refusal is one line on stderr, `dpmcli: error: OPTION: ...`, with the documented exit code;
nothing prints NaN with exit code 0.
"""

import json
import math
import re
import signal
import tempfile
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dpmcli.cli.main import app
from dpmcli.errors import ConfigError, NumericalError

runner = CliRunner()
ODE = ["compare", "--algo", "dpmsolver++", "--order", "2", "--batch", "16"]


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line_error(result, code, option=None):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dpmcli: error:"), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    if option:
        assert lines[0].startswith(f"dpmcli: error: {option}"), lines[0]


def no_nan(text):
    assert not re.search(r"\bnan\b|\bNaN\b|\bNone\b", text), text


def flat(text):
    """stderr as one line: rich wraps long warnings at the terminal width."""
    return " ".join(text.split())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DPMCLI_CACHE", str(folder))
    return folder


@pytest.fixture
def deadline():
    """A hang fails the test instead of stalling the suite."""

    def expire(signum, frame):
        raise TimeoutError("took longer than 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- 1. mixture files

ABSURD = {"weights": [0.5, 0.5], "means": [[0, 0], [1, 1]], "stds": [1e308, 0.1]}


def test_absurd_mixture_is_refused_before_any_work(tmp_path, cache, deadline):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(ABSURD))
    # this compare ran at 100% CPU for minutes (NaN in the reference ODE); sample printed NaN with exit 0
    one_line_error(invoke("compare", "--steps", "5,10", "--algo", "dpmsolver++", "--order", 2, "--model", f"gmm:{path}"), 2, "--model")
    result = invoke("sample", "--model", f"gmm:{path}")
    one_line_error(result, 2, "--model")
    assert "stds" in result.stderr and "1e+308" in result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning on the way to the refusal
        from dpmcli.models import load_mixture

        with pytest.raises(ConfigError):
            load_mixture(f"gmm:{path}")


MALFORMED = {
    "missing-key": {"weights": [1], "means": [[0]]},
    "shape": {"weights": [0.5, 0.5], "means": [[0, 0]], "stds": [1, 1]},
    "ragged": {"weights": [0.5, 0.5], "means": [[0, 0], [1]], "stds": [1, 1]},
    "string": {"weights": ["a", 0.5], "means": [[0], [1]], "stds": [1, 1]},
    "bool": {"weights": [True], "means": [[0]], "stds": [1]},
    "null": {"weights": [None], "means": [[0]], "stds": [1]},
    "negative-weight": {"weights": [-0.5, 1.5], "means": [[0], [1]], "stds": [1, 1]},
    "zero-weight": {"weights": [0, 1], "means": [[0], [1]], "stds": [1, 1]},
    "empty": {"weights": [], "means": [], "stds": []},
    "empty-mean": {"weights": [1], "means": [[]], "stds": [1]},
    "tiny-std": {"weights": [1], "means": [[0]], "stds": [1e-300]},
    "negative-std": {"weights": [1], "means": [[0]], "stds": [-1]},
    "huge-mean": {"weights": [1], "means": [[1e300]], "stds": [1]},
    "too-many": {"weights": [1 / 2000] * 2000, "means": [[0]] * 2000, "stds": [1] * 2000},
    "a-list": [1, 2],
}
RAW = {
    "nan": b'{"weights": [1], "means": [[NaN]], "stds": [1]}',
    "inf": b'{"weights": [1], "means": [[0]], "stds": [1e999]}',
    "big-int": b'{"weights": [1], "means": [[1' + b"0" * 400 + b']], "stds": [1]}',
    "not-json": b"{weights: 1",
    "not-utf8": '{"weights": [1], "means": [[0]], "stds": [1], "name": "\u00e9"}'.encode("latin-1"),
    "deep": b'{"weights": ' + b"[" * 100000 + b"]" * 100000 + b"}",
}


@pytest.mark.parametrize("name", [*MALFORMED, *RAW, "directory", "absent"])
def test_malformed_mixture_files_are_one_line_usage_errors(name, tmp_path):
    path = tmp_path / f"{name}.json"
    if name in MALFORMED:
        path.write_text(json.dumps(MALFORMED[name]))
    elif name in RAW:
        path.write_bytes(RAW[name])
    elif name == "directory":
        path.mkdir()
    one_line_error(invoke("sample", "--model", f"gmm:{path}", "--steps", 3, "--batch", 4), 2, f"--model gmm:{path}")


def test_unnormalised_weights_are_rescaled_with_a_warning(tmp_path):
    path = tmp_path / "relative.json"
    path.write_text(json.dumps({"weights": [1, 3], "means": [[-1], [1]], "stds": [0.2, 0.2]}))
    result = invoke("sample", "--model", f"gmm:{path}", "--steps", 4, "--batch", 16, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["mixture"]["component_weights"] == [0.25, 0.75]
    assert "sum to 4" in flat(result.stderr) and result.stderr.startswith("warning:")
    normalised = tmp_path / "normalised.json"
    normalised.write_text(json.dumps({"weights": [0.25, 0.75], "means": [[-1], [1]], "stds": [0.2, 0.2]}))
    quiet = invoke("sample", "--model", f"gmm:{normalised}", "--steps", 4, "--batch", 16, "-f", "json")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_mixture_at_the_bounds_gives_finite_numbers(tmp_path, cache, deadline):
    path = tmp_path / "edge.json"
    path.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[-1e4, 1e4], [1e4, -1e4]], "stds": [1e-4, 1e4]}))
    result = invoke(*ODE, "--steps", "3,6", "--model", f"gmm:{path}", "-f", "json")
    assert result.exit_code == 0, result.stderr
    no_nan(result.stdout)
    assert all(r["status"] == "ok" and math.isfinite(r["error"]) for r in json.loads(result.stdout)["runs"])


def test_a_non_finite_summary_is_a_numerical_failure(monkeypatch):
    import dpmcli.metrics
    import dpmcli.stats

    for module in (dpmcli.stats, dpmcli.metrics):
        monkeypatch.setattr(module, "expected_log_likelihood", lambda *a, **k: (float("nan"), float("nan")))
    one_line_error(invoke("sample", "--steps", 3, "--batch", 8), 3)
    result = invoke(*ODE, "--steps", 3, "--no-cache", "-f", "json")
    assert result.exit_code == 3, result.stderr  # the run is reported, with no number that reads as a result
    run = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))["runs"][0]
    assert run["status"] == "nan" and run["error"] is None and run["log_likelihood_gap"] is None


def test_reference_ode_stops_on_nan_instead_of_hanging(deadline):
    from dpmcli.models import ring
    from dpmcli.reference import ode_solution

    class Broken:
        def denoise(self, x, alpha, sigma):
            return torch.full_like(x, float("nan")), x

    with pytest.raises(NumericalError):
        ode_solution(Broken(), torch.zeros(4, 2, dtype=torch.float64), -5.0, 5.0)
    assert torch.isfinite(ode_solution(ring(), torch.zeros(4, 2, dtype=torch.float64), -5.0, 5.0)).all()


# ---------------------------------------------------------------- 2. the reference cache


def _npy(cache):
    files = sorted(cache.glob("ode-*.npy"))
    assert len(files) == 1 and files[0].with_suffix(".json").exists(), sorted(cache.iterdir())
    return files[0]


def _nan_fill(path):
    a = np.load(path)
    a[:] = np.nan
    np.save(path, a)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _edit_one_value(path):
    a = np.load(path)
    a[0, 0] += 1e-3
    np.save(path, a)


def _wrong_shape(path):
    np.save(path, np.load(path)[:3])


def _wrong_dtype(path):
    np.save(path, np.load(path).astype(np.float32))


def _garbage(path):
    path.write_bytes(b"\x93NUMPY garbage")


def _no_record(path):
    path.with_suffix(".json").unlink()


@pytest.mark.parametrize("damage", [_nan_fill, _truncate, _edit_one_value, _wrong_shape, _wrong_dtype, _garbage, _no_record])
def test_a_damaged_cache_entry_is_recomputed_with_a_warning(damage, cache):
    args = (*ODE, "--steps", 3, "--max-error", 10, "-f", "json")
    clean = invoke(*args)
    assert clean.exit_code == 0, clean.stderr
    error = json.loads(clean.stdout)["runs"][0]["error"]
    path = _npy(cache)
    damage(path)
    again = invoke(*args)
    assert again.exit_code == 0, again.stderr
    no_nan(again.stdout)
    doc = json.loads(again.stdout)
    assert doc["runs"][0]["error"] == error  # the ground truth, not the damaged file
    assert doc["reference"]["cache_misses"] == 1 and doc["reference"]["cache_hits"] == 0
    warned = [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "reference cache" in warned[0] and "damaged" in again.stderr, again.stderr
    assert "rewritten" in again.stderr
    # rewritten in place: the next run trusts it, silently, and no temporary file is left behind
    third = invoke(*args)
    assert third.exit_code == 0 and "warning" not in third.stderr, third.stderr
    assert json.loads(third.stdout)["reference"]["cache_hits"] == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_cache_writes_are_atomic(cache, monkeypatch):
    """A write that fails half-way leaves no entry and no temporary file behind."""
    import dpmcli.report

    def failing_save(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dpmcli.report.np, "save", failing_save)
    result = invoke(*ODE, "--steps", 3, "-f", "json")
    monkeypatch.undo()
    assert result.exit_code == 0, result.stderr
    assert "not cached" in flat(result.stderr) and "No space left" in flat(result.stderr)
    assert list(cache.iterdir()) == []


# ---------------------------------------------------------------- 3. --cache-dir


def test_cache_dir_that_is_a_file_or_under_one_is_a_usage_error(tmp_path):
    somefile = tmp_path / "somefile"
    somefile.write_text("not a folder")
    for folder in (somefile, somefile / "sub"):
        result = invoke(*ODE, "--steps", 3, "--cache-dir", folder)
        one_line_error(result, 2, "--cache-dir")
        assert str(somefile) in result.stderr
    assert somefile.read_text() == "not a folder"


def test_unwritable_cache_dir_is_read_with_a_warning(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    first = invoke(*ODE, "--steps", 3, "--cache-dir", folder, "-f", "json")
    assert first.exit_code == 0
    entries = sorted(folder.iterdir())
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, **kwargs):  # as root, chmod does not stop writes: refuse them here
        if str(kwargs.get("dir", "")) == str(folder):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    hit = invoke(*ODE, "--steps", 3, "--cache-dir", folder, "-f", "json")
    assert hit.exit_code == 0, hit.stderr
    assert "--cache-dir" in hit.stderr and "not writable" in flat(hit.stderr) and "not cached" in flat(hit.stderr)
    assert json.loads(hit.stdout)["reference"]["cache_hits"] == 1  # still read
    miss = invoke(*ODE, "--steps", 3, "--seed", 1, "--cache-dir", folder, "-f", "json")
    assert miss.exit_code == 0 and "not cached" in flat(miss.stderr)
    assert sorted(folder.iterdir()) == entries  # nothing stored


# ---------------------------------------------------------------- 4. --baseline


@pytest.fixture
def baseline(tmp_path, cache):
    result = invoke(*ODE, "--steps", "3,4", "-f", "json", "-q")
    assert result.exit_code == 0
    return json.loads(result.stdout)


def _write(tmp_path, document, name="base.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_baseline_with_no_run_in_common_fails(tmp_path, baseline):
    path = _write(tmp_path, baseline)
    assert invoke(*ODE, "--steps", "3,4", "--baseline", path, "-q").exit_code == 0
    result = invoke(*ODE, "--steps", 5, "--baseline", path)
    assert result.exit_code == 1, result.stderr
    assert "no run of the baseline matches" in flat(result.stderr) and "Traceback" not in result.stderr


def test_baseline_runs_without_an_error_are_ignored_with_a_note(tmp_path, baseline):
    runs = baseline["runs"]
    runs[0]["error"] = float("nan")  # json.dumps writes NaN, which Python's json reads back
    runs[1].pop("error")
    path = _write(tmp_path, baseline)
    result = invoke(*ODE, "--steps", "3,4", "--baseline", path, "-f", "json")
    assert result.exit_code == 1, result.stderr  # nothing left to compare against
    assert "2 run(s) without a finite error are ignored" in flat(result.stderr)
    assert "no run of the baseline matches" in flat(result.stderr)
    gates = json.loads(result.stdout)["gates"]
    assert any("ignored" in n for n in gates["notes"]) and not gates["passed"]
    runs[1]["error"] = None
    runs[0]["error"] = 1.0  # one usable run, far worse than now: the gate passes on it, the other is noted
    result = invoke(*ODE, "--steps", "3,4", "--baseline", _write(tmp_path, baseline), "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert "1 run(s) without a finite error are ignored" in flat(result.stderr)


def test_a_nan_error_never_passes_max_error():
    from dpmcli.gates import check_gates

    class Report:
        runs = [{"run": "r", "error": float("nan"), "status": "ok", "error_metric": "l2_median"}]
        orders = []

    failures, _ = check_gates(Report(), max_error=1.0)
    assert failures and "no error value" in failures[0]


@pytest.mark.parametrize("kind", ["not-utf8", "not-json", "not-results", "empty-runs", "a-list", "directory", "string-error"])
def test_unusable_baseline_is_a_usage_error(kind, tmp_path, baseline):
    path = tmp_path / "base.json"
    if kind == "not-utf8":
        path.write_bytes(json.dumps(baseline).replace('"config"', '"c\u00f6nfig"').encode("latin-1"))
    elif kind == "not-json":
        path.write_text("{runs:")
    elif kind == "not-results":
        path.write_text(json.dumps({"weights": [1], "means": [[0]], "stds": [1]}))
    elif kind == "empty-runs":
        path.write_text(json.dumps({**baseline, "runs": []}))
    elif kind == "a-list":
        path.write_text(json.dumps(baseline["runs"]))
    elif kind == "directory":
        path.mkdir()
    else:
        baseline["runs"][0]["error"] = "small"
        path.write_text(json.dumps(baseline))
    one_line_error(invoke(*ODE, "--steps", 3, "--baseline", path), 2, "--baseline")


# ---------------------------------------------------------------- 5. steps actually run


def test_compare_shows_the_steps_a_grid_runs_and_its_warning(cache):
    result = invoke("compare", "--algo", "dpmsolver++,dpmsolver", "--order", 2, "--batch", 16, "--spacing", "leading",
                    "--steps", "1000,4", "-f", "json")
    assert result.exit_code == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    few = [r for r in runs if r.get("steps_requested") == 1000]
    assert len(few) == 2 and all(r["steps"] == 1 == r["nfe"] and "1 steps" in r["run"] and "1000" not in r["run"] for r in few)
    assert all("steps_requested" not in r and r["steps"] == 4 for r in runs if r not in few)
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: grid:")]
    assert len(warned) == 1 and "running 1 steps" in flat(result.stderr), result.stderr  # once, although two runs share it
    table = invoke("compare", "--algo", "dpmsolver++", "--order", 2, "--batch", 16, "--spacing", "leading", "--steps", 1000)
    assert table.exit_code == 0 and "grid:" in table.stderr
    rows = [line.split("│") for line in table.stdout.split("Empirical")[0].splitlines() if "dpmsolver++" in line]
    assert [row[4].strip() for row in rows] == ["1"]  # the steps column: what ran


def test_baseline_matches_on_the_steps_asked(tmp_path, cache):
    args = ("compare", "--algo", "dpmsolver++", "--order", 2, "--batch", 16, "--spacing", "leading", "--steps", 1000)
    path = _write(tmp_path, json.loads(invoke(*args, "-f", "json", "-q").stdout))
    result = invoke(*args, "--baseline", path)
    assert result.exit_code == 0, result.stderr
    assert "not in the baseline" not in result.stderr


# ---------------------------------------------------------------- 6. guidance blocks


def test_each_guidance_block_has_its_own_table_sorted_within_itself(cache):
    args = ("compare", "--model", "digits", "--guidance-scale", "1,4", "--steps", "2,4", "--algo", "dpmsolver++",
            "--order", 2, "--batch", 4, "--reference-steps", 10)
    doc = json.loads(invoke(*args, "-f", "json", "-q").stdout)
    scales = [r["guidance_scale"] for r in doc["runs"]]
    assert scales == [1.0, 1.0, 4.0, 4.0]  # blocks stay together, in the order given
    for scale in (1.0, 4.0):
        errors = [r["error"] for r in doc["runs"] if r["guidance_scale"] == scale]
        assert errors == sorted(errors)
    table = invoke(*args, "-q")
    assert table.exit_code == 0, table.stderr
    assert table.stdout.count("runs on digits") == 2
    assert "guidance scale 1 " in table.stdout and "guidance scale 4 " in table.stdout
    first, second = table.stdout.split("guidance scale 4 ")
    assert "guidance scale 1 " in first and "guidance scale 1 " not in second
    markdown = invoke(*args, "-f", "markdown", "-q").stdout
    assert markdown.count("## Runs at guidance scale") == 2
    no_nan(markdown)


# ---------------------------------------------------------------- 7. Markdown


def test_markdown_prints_no_none_or_nan(tmp_path, cache):
    # an SDE solver has no expected order and one step count gives no fitted order: both were `None`
    args = ("compare", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", 2, "--steps", 3, "--batch", 16, "--reference-steps", 10)
    result = invoke(*args, "-f", "markdown", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    for text in (result.stdout, (tmp_path / "out" / "summary.md").read_text()):
        no_nan(text)
        orders = text.split("## Convergence orders")[1]
        assert "| sde-dpmsolver++ order 2 | strong_error | 2 | — | — |" in orders
    table = invoke(*args)
    assert table.exit_code == 0
    no_nan(table.stdout)
    assert "—" in table.stdout.split("Empirical")[1]


def test_markdown_of_a_failed_run_shows_a_dash(monkeypatch, cache):
    import dpmcli.metrics
    import dpmcli.stats

    for module in (dpmcli.stats, dpmcli.metrics):
        monkeypatch.setattr(module, "expected_log_likelihood", lambda *a, **k: (float("nan"), float("nan")))
    result = invoke(*ODE, "--steps", 3, "-f", "markdown")
    assert result.exit_code == 3
    assert "None" not in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| ") and "dpmsolver++ order 2 |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "—" and cells[5] == "nan" and cells[8] == "—", row  # error, status, log-lik gap
