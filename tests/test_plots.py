"""Figures: written files open, carry what they should, and are the same bytes run after run."""

import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

from dpmcli import SolverConfig, build_plan
from dpmcli.cli.main import app
from dpmcli.plots import BAD, count_lines, grid_label, run_figure, samples_figure, schedule_figure
from dpmcli.models import ring

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def check_file(path, fmt):
    data = path.read_bytes()
    if fmt == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert width > 800 and height > 500
    elif fmt == "svg":
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    else:
        assert data[:5] == b"%PDF-" and b"%%EOF" in data[-64:]
    assert b"CreationDate" not in data and b"Matplotlib v" not in data  # no dates, no versions


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_plot_schedule_writes_each_format_deterministically(fmt, tmp_path):
    first, second = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    for out in (first, second):
        result = invoke("plot-schedule", "--spacing", "linspace,karras", "--spacing", "logsnr", "--steps", 10, "--out", out)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "" and result.stderr.strip() == f"wrote {out}"  # files are reported with the messages
    check_file(first, fmt)
    assert first.read_bytes() == second.read_bytes()


def test_schedule_figure_draws_one_curve_set_per_combination():
    plans = [build_plan(SolverConfig(spacing=s, steps=n)) for s in ("linspace", "karras") for n in (5, 9)]
    labels = [grid_label(p) for p in plans]
    fig = schedule_figure(plans, labels)
    sigma_axis = fig.axes[0]
    legend = [t.get_text() for t in sigma_axis.get_legend().get_texts()]
    assert all(label in legend for label in labels) and len(set(labels)) == 4
    # per grid: sigma (points + continuous), lambda (points + continuous), alpha_t, sigma_t, h
    assert count_lines(fig) == 7 * len(plans)
    final_min = build_plan(SolverConfig(steps=6, final_sigma="sigma-min"))
    assert count_lines(schedule_figure([final_min], ["x"])) == 7 + 4  # the final sigma drawn on two panels


def test_repeated_timesteps_are_marked_in_red():
    plan = build_plan(SolverConfig(spacing="karras", steps=400, compat="diffusers"))
    assert np.any(plan.timesteps[1:] == plan.timesteps[:-1])
    fig = schedule_figure([plan], ["karras"])
    red = [line for ax in fig.axes for line in ax.get_lines() if line.get_color() == BAD]
    assert len(red) == 3 and all(len(line.get_xdata()) > 0 for line in red)


def test_run_and_sample_figures_from_a_run(tmp_path):
    plot, samples, trace = tmp_path / "run.svg", tmp_path / "samples.png", tmp_path / "trace.npz"
    args = ["sample", "--steps", 9, "--batch", 200, "--plot", plot, "--plot-samples", samples, "--trace", trace, "--trace-stride", 4]
    result = invoke(*args, "-f", "json")
    assert result.exit_code == 0, result.stderr
    check_file(plot, "svg")
    check_file(samples, "png")
    data = np.load(trace)
    assert list(data["steps"]) == [0, 4, 8]
    assert data["latents"].shape == (3, 200, 2) and data["x0"].shape == (3, 200, 2) and data["final"].shape == (200, 2)
    np.testing.assert_allclose(data["sigmas"], build_plan(SolverConfig(steps=9)).sigmas[[0, 4, 8]])


def test_run_figure_marks_orders_and_samples_figure_draws_trajectories():
    rows = [
        {"step": i, "order": min(i + 1, 3), **{f"{p}{k}": float(i) for p in ("", "x0_") for k in ("mean", "std", "min", "max", "norm")}}
        for i in range(6)
    ]
    final = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "norm": 1.0}
    fig = run_figure(rows, final, "title")
    order_axis = fig.axes[-1]
    assert list(order_axis.get_yticks()) == [1, 2, 3]
    paths = np.random.default_rng(0).normal(size=(7, 5, 2))
    fig = samples_figure(ring(), paths[-1], paths, "title")
    assert len(fig.axes[0].get_lines()) == 3 * 5  # path, start and end of each trajectory


@pytest.mark.parametrize(
    "args, option",
    [
        (["plot-schedule", "--out", "{tmp}/x.jpg"], "--out"),
        (["plot-schedule", "--out", "{tmp}/missing/x.png"], "--out"),
        (["plot-schedule", "--steps", "5,abc", "--out", "{tmp}/x.png"], "--steps"),
        (["plot-schedule", "--spacing", "linspace,nope", "--out", "{tmp}/x.png"], "--spacing"),
        (["plot-schedule", "--steps", "1,2,3,4,5", "--spacing", "linspace,karras,logsnr", "--out", "{tmp}/x.png"], "combinations"),
        (["sample", "--model", "gmm64", "--plot-samples", "{tmp}/x.png"], "--plot-samples"),
        (["sample", "--plot", "{tmp}/x.gif"], "--plot"),
        (["sample", "--trace", "{tmp}/x.npy"], "--trace"),
        (["sample", "--trace", "{tmp}/x.npz", "--trace-stride", 0], "--trace-stride"),
    ],
)
def test_bad_figure_options_exit_2_and_write_nothing(args, option, tmp_path):
    result = invoke(*[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.stderr
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_error_figure_names_what_the_error_is_measured_against():
    from dpmcli.plots import error_figure

    rows = [{"kind": "ode", "solver": "dpmsolver++ order 2", "nfe": n, "error": 1.0 / n, "error_metric": metric}
            for n in (5, 10) for metric in ("l2_median_vs_reference",)]
    assert error_figure(rows, "t").axes[0].get_ylabel() == "median L2 distance to the reference run"
    exact = [{**r, "error_metric": "l2_median"} for r in rows]
    assert error_figure(exact, "t").axes[0].get_ylabel() == "median L2 error vs exact ODE solution"
