"""Resumable sweeps: ``compare --out DIR`` records each finished run; ``--resume`` runs only the missing ones.

An interrupted sweep (Ctrl-C, SIGTERM) keeps its finished runs in DIR (``sweep.json`` and
``runs/``); ``--resume`` with the same options ends with the outputs of an uninterrupted sweep
(timings aside) and runs nothing twice. Other options, a missing folder or one without a sweep
record, and ``--resume`` without ``--out`` are one-line usage errors (exit 2).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpmcli.cli import compare_cmd
from dpmcli.cli.main import app
from dpmcli.errors import ConfigError
from dpmcli.runlog import RUNS, SWEEP_FILE, RunLog, safe_name

ROOT = Path(__file__).resolve().parents[1]
# six ODE runs sharing one reference; --no-cache: every process computes it once, so even the
# reference's cache counters of a resumed sweep are those of an uninterrupted one
ARGS = ["compare", "--model", "ring", "--batch", "256", "--algo", "dpmsolver++", "--order", "1,2,3", "--steps", "5,10", "--no-cache", "-q"]
RUNS_IN_ARGS = 6
OUTPUTS = ["config.json", "error_vs_nfe.png", "results.csv", "results.json", "samples.png", "summary.md"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def strip_timings(value):
    """The document without what differs between two runs of the same sweep: its timings."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not (k == "seconds" or k.endswith("_seconds"))}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def without_cache_counts(document: dict) -> dict:
    """Cache hits and misses count what one process looked up: they depend on the cache, not on the sweep."""
    return {**document, "reference": {k: v for k, v in document["reference"].items() if k not in ("cache_hits", "cache_misses")}}


def csv_without_seconds(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(path.read_text()))]


def files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_outputs(resumed: Path, full: Path, counts: bool = True) -> None:
    """The folder of a resumed sweep is the folder of an uninterrupted one, timings aside."""
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in full.iterdir()) == OUTPUTS
    a, b = (strip_timings(json.loads((f / "results.json").read_text())) for f in (resumed, full))
    if not counts:
        a, b = without_cache_counts(a), without_cache_counts(b)
    assert a == b
    assert csv_without_seconds(resumed / "results.csv") == csv_without_seconds(full / "results.csv")
    for name in ("config.json", "error_vs_nfe.png", "samples.png"):
        assert (resumed / name).read_bytes() == (full / name).read_bytes(), name


@pytest.fixture
def count_runs(monkeypatch):
    """count_runs(stop_after=None) -> the labels of the runs the next compare executes; with
    ``stop_after``, Ctrl-C (KeyboardInterrupt) arrives once that many have finished."""

    real = compare_cmd.run_sweep

    def install(stop_after: int | None = None) -> list[str]:
        done: list[str] = []

        def run_sweep(prepared, on_run=None, **options):
            def counted(label):
                done.append(label)
                if on_run is not None:
                    on_run(label)
                if stop_after is not None and len(done) >= stop_after:
                    raise KeyboardInterrupt

            return real(prepared, on_run=counted, **options)

        monkeypatch.setattr(compare_cmd, "run_sweep", run_sweep)
        return done

    return install


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The uninterrupted sweep's folder."""
    out = tmp_path_factory.mktemp("full") / "out"
    result = invoke(*ARGS, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


def interrupt(count_runs, out: Path, *extra, after: int = 2):
    """A sweep of ARGS (and ``extra``) into ``out``, Ctrl-C after ``after`` runs; later compares run to the end."""
    count_runs(stop_after=after)
    result = invoke(*ARGS, *extra, "--out", out)
    assert result.exit_code == 130, (result.exit_code, result.stderr)
    count_runs()
    return result


def changed(option: str, value) -> list:
    """ARGS with another value of ``option``."""
    args = list(ARGS)
    args[args.index(option) + 1] = str(value)
    return args


def test_an_interrupted_sweep_resumes_to_the_results_of_an_uninterrupted_one(tmp_path, count_runs, full):
    out = tmp_path / "out"
    result = interrupt(count_runs, out)
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "dpmcli: error: interrupted" and len(lines) == 2, result.stderr
    saved, command = lines[0].split("; to finish the sweep: ")
    assert saved == f"dpmcli: 2 of {RUNS_IN_ARGS} run(s) saved in {out}"
    assert shlex.split(command) == ["dpmcli", *ARGS, "--out", str(out), "--resume"]
    # the log: the sweep record, and a record and the samples of each finished run; no output yet
    assert sorted(p.name for p in out.iterdir()) == [RUNS, SWEEP_FILE]
    records = sorted(p.name for p in (out / RUNS).iterdir())
    assert len(records) == 4 and {Path(r).suffix for r in records} == {".json", ".npy"}
    first = json.loads((out / RUNS / records[0]).read_text())
    assert first["row"]["run"] == first["run"] and Path(records[0]).stem == safe_name(first["run"])

    finished = {json.loads(p.read_text())["run"] for p in (out / RUNS).glob("*.json")}
    ran = count_runs()
    resumed = invoke(*ARGS, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert len(ran) == RUNS_IN_ARGS - 2 and not finished & set(ran)  # nothing recorded runs again
    assert_same_outputs(out, full)  # the log is gone with the sweep done


def test_sigterm_keeps_the_finished_runs_and_resume_finishes(tmp_path, count_runs):
    """A real process, SIGTERM after its first run record appears (each record is followed by a pause)."""
    args = ["compare", "--model", "ring", "--batch", "256", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2",
            "--steps", "5,10", "--cache-dir", str(tmp_path / "cache"), "-q"]
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from dpmcli import runlog
        from dpmcli.cli.main import app

        record = runlog.RunLog.record
        def slow(self, *args):
            record(self, *args)
            time.sleep(60)  # SIGTERM arrives here
        runlog.RunLog.record = slow
        app(sys.argv[1:], prog_name="dpmcli")
    """))
    part = tmp_path / "part"
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), *args, "--out", str(part)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((part / RUNS).glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == "dpmcli: error: terminated" and lines[0].startswith("dpmcli: 1 of 8 run(s) saved in "), stderr
    assert lines[0].endswith(f"--out {part} --resume")

    ran = count_runs()
    resumed = invoke(*args, "--out", part, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert len(ran) == 7
    uninterrupted = invoke(*args, "--out", tmp_path / "full")
    assert uninterrupted.exit_code == 0, uninterrupted.stderr
    assert_same_outputs(part, tmp_path / "full", counts=False)


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpmcli: error: --resume: "), result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_resume_refuses_what_it_cannot_resume(tmp_path, count_runs, full):
    one_line_error(invoke(*ARGS, "--resume"), "needs --out")
    one_line_error(invoke(*ARGS, "--out", tmp_path / "missing", "--resume"), "does not exist")
    assert not (tmp_path / "missing").exists()
    one_line_error(invoke(*ARGS, "--out", full, "--resume"), "no sweep record", "nothing to resume")  # a finished sweep

    out = tmp_path / "out"
    interrupt(count_runs, out)
    before = files(out)
    ran = count_runs()
    line = one_line_error(invoke(*ARGS, "--seed", 1, "--out", out, "--resume"), "holds another sweep", "--seed 0 (now 1)")
    assert "--steps" not in line
    one_line_error(invoke(*changed("--steps", "5,10,20"), "--out", out, "--resume"), "--steps [5, 10] (now [5, 10, 20])")
    one_line_error(invoke(*changed("--batch", 128), "--out", out, "--resume"), "--batch 256 (now 128)")
    one_line_error(invoke(*ARGS, "--beta-end", 0.02, "--out", out, "--resume"), "--beta-end 0.012 (now 0.02)")
    assert ran == [] and files(out) == before  # nothing run, nothing written

    (out / SWEEP_FILE).write_text("{not json")
    one_line_error(invoke(*ARGS, "--out", out, "--resume"), "sweep.json cannot be read")

    # a fresh sweep sets sweep.json and runs/ aside: never files a run log did not write
    mine = tmp_path / "mine"
    (mine / RUNS).mkdir(parents=True)
    (mine / RUNS / "notes.txt").write_text("my own notes")
    before = files(mine)
    result = invoke(*ARGS, "--out", mine)
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"dpmcli: error: --out: {mine / RUNS} holds notes.txt, not a dpmcli run log; give --out a folder of its own"
    )
    assert files(mine) == before and ran == []


def test_without_resume_a_folder_with_run_records_starts_afresh(tmp_path, count_runs, full):
    """Records of an interrupted sweep never mix into a new one, even one with the same options."""
    out = tmp_path / "out"
    interrupt(count_runs, out, "--seed", 1)  # another x_T: its records would show in the results
    ran = count_runs()
    result = CliRunner().invoke(app, [str(a) for a in ARGS if a != "-q"] + ["--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert len(ran) == RUNS_IN_ARGS
    assert "holds 2 run(s) of another sweep, which was interrupted; starting afresh" in result.stderr
    assert_same_outputs(out, full)

    outputs = files(out)
    interrupt(count_runs, out)  # the same options, interrupted over the finished folder: its outputs stay as they were
    assert {k: v for k, v in files(out).items() if k in outputs} == outputs
    ran = count_runs()
    assert invoke(*ARGS, "--out", out).exit_code == 0
    assert len(ran) == RUNS_IN_ARGS  # without --resume, nothing is taken from the log
    assert_same_outputs(out, full)


def test_an_error_leaves_the_folder_as_it_was(tmp_path, count_runs, monkeypatch, full):
    out = tmp_path / "out"
    interrupt(count_runs, out)
    before = files(out)

    def full_disk(*args, **kwargs):
        raise ConfigError(f"--out: cannot write {out}/results.json: No space left on device")

    monkeypatch.setattr(compare_cmd, "write_compare_folder", full_disk)
    for resume in ([], ["--resume"]):  # a fresh sweep (its log set the old one aside), and a resume
        result = invoke(*ARGS, "--out", out, *resume)
        assert result.exit_code == 2 and "No space left on device" in result.stderr
        assert files(out) == before
    result = invoke(*ARGS, "--out", tmp_path / "new" / "out")
    assert result.exit_code == 2 and not (tmp_path / "new").exists()  # a folder the failed sweep made goes too

    monkeypatch.undo()
    ran = count_runs()
    assert invoke(*ARGS, "--out", out, "--resume").exit_code == 0
    assert len(ran) == RUNS_IN_ARGS - 2
    assert_same_outputs(out, full)


def test_a_damaged_record_runs_again(tmp_path, count_runs, full):
    out = tmp_path / "out"
    interrupt(count_runs, out, after=3)
    arrays = sorted((out / RUNS).glob("*.npy"))
    arrays[0].write_bytes(arrays[0].read_bytes()[:100])  # truncated (an edit; a write is never half done)
    (out / RUNS / ".left-by-a-killed-write.npy.x1.tmp").write_bytes(b"half")
    ran = count_runs()
    result = CliRunner().invoke(app, [str(a) for a in ARGS if a != "-q"] + ["--out", str(out), "--resume"])
    assert result.exit_code == 0, result.stderr
    assert len(ran) == RUNS_IN_ARGS - 2
    assert "are damaged" in result.stderr and arrays[0].name in result.stderr
    assert_same_outputs(out, full)


def test_a_run_log_that_does_not_write(tmp_path):
    """writer=False (torchrun ranks other than 0): records are read, never written; the folder is not made."""
    sweep = {"sweep": {"seed": 0}}
    quiet = RunLog(tmp_path / "out", sweep, writer=False)
    with quiet:
        quiet.record("a run", {"run": "a run", "error": 1.0}, np.zeros((4, 2)))
    assert not (tmp_path / "out").exists() and quiet.recorded("a run") is None

    writer = RunLog(tmp_path / "out", sweep)
    with pytest.raises(KeyboardInterrupt), writer:
        writer.record("a run", {"run": "a run", "error": 1.0, "nfe": 5}, np.arange(8.0).reshape(4, 2))
        writer.record("a failed run", {"run": "a failed run", "status": "nan", "error": None}, None)
        raise KeyboardInterrupt
    reader = RunLog(tmp_path / "out", sweep, resume=True, writer=False)
    row, samples = reader.recorded("a run")
    assert row == {"run": "a run", "error": 1.0, "nfe": 5} and list(row) == ["run", "error", "nfe"]
    assert samples.dtype == np.float64 and np.array_equal(samples, np.arange(8.0).reshape(4, 2))
    assert reader.recorded("a failed run") == ({"run": "a failed run", "status": "nan", "error": None}, None)
    assert reader.recorded("another run") is None and reader.saved == 2
    before = files(tmp_path / "out")
    with reader:
        reader.record("another run", {"run": "another run"}, None)
    assert files(tmp_path / "out") == before  # a reader ends without touching the folder
    with pytest.raises(ConfigError, match=r"--seed 0 \(now 1\)"):
        RunLog(tmp_path / "out", {"sweep": {"seed": 1}}, resume=True)
