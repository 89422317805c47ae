"""The command line's edges: parser errors, bad input, and runs that fail while writing.

Every bad input gets one line on stderr, ``dpmcli: error: ...``, naming the option, with the
documented exit code; a failed run leaves the files that were there as they were and no new one.
"""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import dpmcli
from dpmcli.cli.main import app

runner = CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dpmcli: error: "), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["sample", "--bogus"], ["--bogus: no such option", "dpmcli sample --help"]),
        (["sample", "--lower-orde"], ["--lower-orde: no such option", "did you mean", "--lower-order-final"]),
        (["sample", "--steps", "abc"], ["--steps: 'abc': it must be an integer"]),
        (["sample", "--steps=abc"], ["--steps: 'abc': it must be an integer"]),
        (["compare", "--tolerance", "x"], ["--tolerance: 'x': it must be a number"]),
        (["sample", "--steps"], ["--steps: needs a value", "dpmcli sample --help"]),
        (["sample", "--euler-at-final=3"], ["--euler-at-final: is a switch"]),
        (["train"], ["TARGET: missing", "dpmcli train --help"]),
        (["sample", "extra", "more"], ["unexpected argument(s) 'extra more'"]),
        (["samp"], ["'samp': no such command", "'sample'"]),
    ],
)
def test_parser_errors_are_one_line_with_exit_2(args, fragments):
    one_line_error(invoke(*args), 2, *fragments)


def test_parser_errors_from_the_installed_command_are_one_line():
    """The same line from a real process (the console script's own entry point), not only the test runner."""
    result = subprocess.run([sys.executable, "-m", "dpmcli", "schedule", "--order", "two"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["dpmcli: error: --order: 'two': it must be an integer"]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"dpmcli {dpmcli.__version__}"


def test_no_command_prints_the_help():
    result = invoke()
    assert result.exit_code == 2 and "Commands" in result.stdout and "sample" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["sample", "--seed=-1"], ["--seed: -1"]),
        (["train", "digits", "--out", "x", "--seed=-1"], ["--seed: -1"]),
        (["compare", "--seed=-1", "--steps", "5", "--algo", "dpmsolver++", "--order", "1"], ["--seed: -1"]),
        (["sample", "--class", "3"], ["--class: model 'ring' takes no conditioning"]),
        (["sample", "--batch", "1000000000"], ["--batch: 1000000000 samples need", "use a smaller --batch"]),
        (["compare", "--steps", "5,,10"], ["--steps: '5,,10' has an empty entry"]),
        (["plot-schedule", "--steps", "5,,10"], ["--steps: '5,,10' has an empty entry"]),
        (["sample", "--sigmas", "14,7,1,0.1", "--final-sigma", "zero"], ["--final-sigma: zero conflicts with --sigmas"]),
        (["sample", "--sigmas", "14,7,1,0", "--final-sigma", "sigma-min"], ["--final-sigma: sigma-min conflicts with --sigmas"]),
        (["schedule", "--trained-betas", "betas.txt", "--train-steps", "1000"], ["--train-steps: 1000 conflicts with --trained-betas"]),
        (["sample", "--save", "a" * 300 + ".npy"], ["--save: the name", "bytes long"]),
        (["compare", "--out", "b" * 300], ["--out: the name", "bytes long"]),
    ],
)
def test_bad_values_name_their_option(args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "betas.txt").write_text("0.01\n" * 50)
    one_line_error(invoke(*args), 2, *fragments)
    assert [p.name for p in tmp_path.iterdir()] == ["betas.txt"]


def test_sigmas_with_a_matching_final_sigma_is_accepted():
    result = invoke("sample", "--sigmas", "14,7,1,0", "--final-sigma", "zero", "--batch", 16, "-q", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sigmas"][-1] == 0.0


def test_an_empty_betas_file_gives_one_line_and_no_library_warning(tmp_path):
    empty = tmp_path / "betas.txt"
    empty.write_text("")
    one_line_error(invoke("schedule", "--trained-betas", empty), 2, "--trained-betas", "holds no numbers")


def test_a_broken_diffusers_folder_gives_one_line_and_no_library_log(tmp_path):
    pytest.importorskip("diffusers")
    folder = tmp_path / "unet-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    line = one_line_error(invoke("sample", "--model", f"diffusers:{folder}"), 2, "--model")
    assert "An error occurred" not in line


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_x_init_must_hold_real_numbers(tmp_path, dtype):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((4, 2), dtype=dtype))
    one_line_error(invoke("sample", "--x-init", path), 2, "--x-init", "real numbers")


def test_noise_must_hold_real_numbers(tmp_path):
    path = tmp_path / "z.npy"
    np.save(path, np.ones((5, 8, 2), dtype=np.complex128))
    one_line_error(invoke("sample", "--algo", "sde-dpmsolver++", "--steps", 5, "--batch", 8, "--noise", path), 2, "--noise", "real")


def test_one_file_for_two_outputs_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("sample", "--plot", "p.png", "--plot-samples", "p.png"), 2, "--plot-samples: p.png is also the file of --plot")
    assert list(tmp_path.iterdir()) == []


def _files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _disk_full_for(monkeypatch, name: str):
    """Writing a file called ``name`` (by any writer: figures, arrays, text) fails as on a full disk."""
    from dpmcli import report

    real = report.atomic_path

    def atomic_path(path, suffix=".tmp"):
        manager = real(path, suffix)
        if os.path.basename(str(path)) != name:
            return manager

        class Full:
            def __enter__(self):
                return manager.__enter__()

            def __exit__(self, *exc):
                error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                manager.__exit__(OSError, error, None)  # the writer's own handling of the failed write
                raise error

        return Full()

    monkeypatch.setattr(report, "atomic_path", atomic_path)


def test_sample_writes_every_output_or_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing.png").write_bytes(b"the figure of an earlier run")
    (tmp_path / "full").mkdir()
    before = _files(tmp_path)
    _disk_full_for(monkeypatch, "big.png")
    result = invoke("sample", "--steps", 5, "--batch", 32, "--save", "out.npy", "--plot", "existing.png", "--plot-samples", "full/big.png")
    one_line_error(result, 2, "--plot-samples: cannot write full/big.png", "No space left on device")
    assert _files(tmp_path) == before  # out.npy not written, existing.png not replaced, no temporary file left

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    result = invoke("sample", "--steps", 5, "--batch", 32, "--save", "out.npy", "--plot", "existing.png", "--plot-samples", "full/big.png")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "existing.png").read_bytes().startswith(b"\x89PNG") and (tmp_path / "out.npy").is_file()
    assert [line for line in result.stderr.splitlines() if line.startswith("wrote ")] == [
        "wrote out.npy", "wrote existing.png", "wrote full/big.png",
    ]


def test_compare_writes_every_output_or_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPMCLI_CACHE", str(tmp_path / "cache"))
    args = ["compare", "--algo", "dpmsolver++", "--order", "1,2", "--steps", "5,10", "--batch", "64", "--out", "res", "--plot", "full/err.png"]
    (tmp_path / "full").mkdir()
    first = invoke(*args[:-2])
    assert first.exit_code == 0, first.stderr
    assert "wrote res/results.json" in first.stderr
    before = {k: v for k, v in _files(tmp_path).items() if not k.startswith("cache/")}
    _disk_full_for(monkeypatch, "err.png")
    one_line_error(invoke(*args), 2, "--plot: cannot write full/err.png")
    after = {k: v for k, v in _files(tmp_path).items() if not k.startswith("cache/")}
    assert after == before

    # a new --out folder made by the failed run goes with it
    one_line_error(invoke(*args[:-4], "--out", "new/res", "--plot", "full/err.png"), 2, "--plot")
    assert not (tmp_path / "new").exists()


def test_plot_schedule_reports_its_file_on_stderr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("plot-schedule", "--out", "grid.png")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.strip() == "wrote grid.png"


def test_sample_json_reports_the_device_that_ran():
    result = invoke("sample", "--steps", 3, "--batch", 8, "--device", "auto", "-f", "json")
    config = json.loads(result.stdout)["config"]
    assert config["device"] == config["resolved_device"] != "auto"


def test_sigterm_discards_the_outputs_and_exits_143(tmp_path):
    """A terminated run (a CI time-out) leaves no file behind and says so in one line."""
    script = (
        "import os, signal, sys\n"
        "import dpmcli.plots\n"
        "def run_figure(*args, **kwargs):  # --save is staged by now; the figure never comes\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "dpmcli.plots.run_figure = run_figure\n"
        "from dpmcli.cli.main import main\n"
        "sys.argv = ['dpmcli', 'sample', '--steps', '5', '--save', 'out.npy', '--plot', 'run.png']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.strip() == "dpmcli: error: terminated"
    assert list(tmp_path.iterdir()) == []


def test_train_full_disk_is_a_usage_error_and_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from dpmcli import training
    from dpmcli.models import digits as D

    real = training.train_digits

    def tiny(out, **kwargs):
        return real(out, **kwargs, classifier_epochs=1, hidden=16, blocks=1, embedding=8, batch_size=32, evaluation_batch=10)

    def full(module, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(training, "train_digits", tiny)
    monkeypatch.setattr(D, "save_weights", full)
    result = invoke("train", "digits", "--out", tmp_path / "new" / "digits", "--iterations", 2, "-q")
    one_line_error(result, 2, "--out: cannot write into", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_train_prints_progress_lines_off_a_terminal(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from dpmcli import training

    real = training.train_digits

    def tiny(out, **kwargs):
        return real(out, **kwargs, classifier_epochs=3, hidden=16, blocks=1, embedding=8, batch_size=32, evaluation_batch=10)

    monkeypatch.setattr(training, "train_digits", tiny)
    result = invoke("train", "digits", "--out", tmp_path / "d", "--iterations", 20)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "classifier (epochs): 1/3" in lines and "classifier (epochs): 3/3" in lines
    assert "denoiser (iterations): 20/20" in lines
    quiet = invoke("train", "digits", "--out", tmp_path / "d", "--iterations", 2, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


@pytest.mark.parametrize("command", ["schedule", "sample", "plot-schedule", "compare", "train"])
def test_help_fits_80_columns_whole_names_and_words(command):
    result = invoke(command, "--help", terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout  # no option name cut short
    # the help column keeps room for words (the solver panel once wrapped one word a line, 20 columns wide)
    starts = [len(line) - len(line[1:].lstrip()) for line in lines if line.startswith("│   ")]
    assert starts and 80 - max(starts) >= 25
