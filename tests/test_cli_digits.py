"""`dpmcli sample` and `dpmcli compare` on the shipped digits network, through the command line.

The floors come from digits.json, where they were stored (measured value minus a margin) when
the weights were made; nothing here is typed in by hand.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dpmcli.cli.main import app
from dpmcli.models.digits import DATA_DIR

runner = CliRunner()
FLOORS = json.loads((DATA_DIR / "digits.json").read_text())["floors"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def sample_json(*args) -> dict:
    result = invoke("sample", "--model", "digits", "-f", "json", "-q", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def without_timings(document: dict) -> dict:
    return {k: v for k, v in document.items() if k != "seconds"}


def test_default_digits_run_meets_the_floor_repeats_and_writes_a_grid(tmp_path):
    from PIL import Image

    grid = tmp_path / "grid.png"
    first = sample_json("--save-images", grid)
    floor = FLOORS["guidance_2"]
    assert first["config"]["batch"] == 100 and first["nfe"] == 20
    assert first["model"]["class_label"] == "all" and first["model"]["guidance_scale"] == 2.0
    assert first["quality"]["class_accuracy"] >= floor["class_accuracy"]
    assert first["quality"]["classifier_confidence"] >= floor["classifier_confidence"]
    # the model's training schedule replaced dpmcli's default betas
    assert first["config"]["beta_schedule"] == "linear" and first["config"]["beta_end"] == 0.02
    with Image.open(grid) as picture:
        width, height = picture.size
    assert width == height  # 100 digits, ten to a row: a square grid
    assert without_timings(sample_json()) == without_timings(first)  # deterministic at 20 steps


def test_one_class_with_guidance_is_that_digit():
    document = sample_json("--class", "3", "--guidance-scale", "2", "--batch", "40")
    assert document["quality"]["class_accuracy"] >= FLOORS["guidance_2"]["class_accuracy"]
    assert document["quality"]["class_shares"]["3"] >= FLOORS["guidance_2"]["class_accuracy"]


def test_unconditional_run_has_no_accuracy_but_confident_digits():
    document = sample_json("--class", "none", "--batch", "200")
    assert document["quality"]["class_accuracy"] is None
    assert document["quality"]["classifier_confidence"] >= FLOORS["unconditional"]["classifier_confidence"]


def test_typed_betas_win_over_the_model_and_say_so():
    result = invoke("sample", "--model", "digits", "--beta-schedule", "scaled_linear", "--batch", "10", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["beta_schedule"] == "scaled_linear"
    assert "replaces the training schedule" in result.stderr


def test_compare_on_digits_converges_to_its_reference_run(tmp_path):
    result = invoke("compare", "--model", "digits", "--algo", "dpmsolver++", "--order", "1,2", "--steps", "5,10,20,40",
                    "--spacing", "logsnr", "--final-sigma", "sigma-min", "--batch", 100, "--reference-steps", 100,
                    "-f", "json", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["reference"]["kind"] == "reference run"
    errors = {(r["order"], r["steps"]): r["error"] for r in doc["runs"]}
    for order in (1, 2):
        assert errors[(order, 5)] > errors[(order, 10)] > errors[(order, 20)] > errors[(order, 40)]
    orders = {o["solver"]: o["fitted_order"] for o in doc["orders"]}
    # on a smooth grid a trained network shows its order: order 2 converges clearly faster
    assert orders["dpmsolver++ order 2"] > orders["dpmsolver++ order 1"] + 0.3
    assert all(r["class_accuracy"] is not None for r in doc["runs"])
    csv_header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"class_accuracy", "classifier_confidence", "nn_distance"} <= set(csv_header)
    assert (tmp_path / "out" / "samples.png").exists()


def test_compare_sweeps_guidance_and_shows_it(tmp_path):
    result = invoke("compare", "--model", "digits", "--algo", "dpmsolver++", "--order", "2", "--steps", "5,10",
                    "--guidance-scale", "1,4", "--batch", 50, "--reference-steps", 40)
    assert result.exit_code == 0, result.stderr
    assert "cfg" in result.stdout and "class acc" in result.stdout
    doc = json.loads(invoke("compare", "--model", "digits", "--algo", "dpmsolver++", "--order", "2", "--steps", "5,10",
                            "--guidance-scale", "1,4", "--batch", 50, "--reference-steps", 40, "-f", "json", "-q").stdout)
    assert sorted({r["guidance_scale"] for r in doc["runs"]}) == [1.0, 4.0]
    assert {r["solver"] for r in doc["runs"]} == {"dpmsolver++ order 2 cfg 1", "dpmsolver++ order 2 cfg 4"}
    # stronger guidance bends the flow harder: the same solver lands further from its reference
    errors = {(r["guidance_scale"], r["steps"]): r["error"] for r in doc["runs"]}
    assert errors[(4.0, 5)] > errors[(1.0, 5)]
    best = [r for r in doc["runs"] if r["best_at_nfe"]]
    assert len(best) == 4  # one per NFE within each guidance block


@pytest.mark.parametrize("args, option", [
    (("--model", "digits:/nonexistent/folder"), "--model"),
    (("--model", "digits", "--class", "12"), "--class"),
    (("--model", "digits", "--prompt", "a cat"), "--prompt"),
    (("--model", "digits", "--plot-samples", "x.png"), "--plot-samples"),
    (("--model", "digits", "--x-init", "missing.npy"), "--x-init"),
])
def test_digits_errors_are_one_line(args, option):
    result = invoke("sample", *args, "-q")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_x_init_with_image_shape(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    document = sample_json("--x-init", tmp_path / "x.npy")
    assert document["config"]["batch"] == 3
    bad = tmp_path / "flat.npy"
    np.save(bad, x.reshape(3, 64))
    result = invoke("sample", "--model", "digits", "--x-init", bad, "-q")
    assert result.exit_code == 2 and "(batch, 1, 8, 8)" in result.stderr


def test_a_broken_digits_folder_is_a_usage_error(tmp_path):
    import shutil

    folder = tmp_path / "digits"
    shutil.copytree(DATA_DIR, folder, ignore=shutil.ignore_patterns("gmm*", "__*"))
    for text in ("[1]", json.dumps({"architecture": {}, "scheduler": {"beta_schedule": "linear"}}),
                 json.dumps({**json.loads((DATA_DIR / "digits.json").read_text()), "architecture": {"hidden": "wide"}})):
        (folder / "digits.json").write_text(text)
        result = invoke("sample", "--model", f"digits:{folder}", "-q")
        assert result.exit_code == 2, (text, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "--model digits" in result.stderr


@pytest.mark.parametrize("args", [("--class", "none", "--guidance-scale", "3"), ("--guidance-scale", "-1")])
def test_guidance_that_cannot_apply_is_refused(args):
    result = invoke("sample", "--model", "digits", *args, "-q")
    assert result.exit_code == 2 and "--guidance-scale" in result.stderr, result.stderr


def test_compare_leaves_the_model_as_it_came():
    from dpmcli.compare import Sweep, prepare_sweep, run_sweep
    from dpmcli.config import SolverConfig

    prepared = prepare_sweep(Sweep(base=SolverConfig(), values={"algo": ["dpmsolver++"], "order": [2], "steps": [4]},
                                   model="digits", batch=8, reference_steps=10, guidance=[1.0, 4.0]))
    default = prepared.model.guidance_scale
    report = run_sweep(prepared)
    assert prepared.model.guidance_scale == default  # restored to what the loader set
    assert report.document()["config"]["model_info"]["guidance_scale"] == [1.0, 4.0]
    assert [r["guidance_scale"] for r in sorted(report.runs, key=lambda r: r["guidance_scale"])] == [1.0, 4.0]
    assert report.document()["config"]["reference_steps"] == 10 and report.document()["config"]["batch"] == 8
