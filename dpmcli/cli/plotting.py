"""``dpmcli plot-schedule`` and the figures of ``dpmcli sample``."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..plan import build_plan
from ..recipe import load_recipe, stock_config
from ..report import OutputFiles, atomic_write
from .console import warn
from .options import require_suffix, split_list


def check_dpi(dpi: int) -> None:
    if dpi < 10 or dpi > 1200:
        raise ConfigError(f"--dpi: {dpi} is not allowed; choose 10 to 1200")


def check_figure_path(option: str, path: Path | None) -> None:
    from ..plots import figure_format

    if path is not None:
        figure_format(option, path)


# plot-schedule's list options: (SolverConfig name, flag, how a value reads)
CURVE_AXES = (("spacing", "--spacing", str), ("beta_schedule", "--beta-schedule", str), ("steps", "--steps", int),
              ("process", "--process", str), ("flow_shift", "--flow-shift", float))


def plot_schedule_command(*, solver, lists: dict, out: Path, dpi: int, title, quiet: bool, recipes=None) -> None:
    """Every combination of the list options (CURVE_AXES; ``lists`` by name) as one curve of one figure; each
    recipe one more, and then the stock curves take the first recipe's steps and schedule where not typed."""
    from ..plots import grid_label, save_figure, schedule_figure

    check_figure_path("--out", out)
    outputs = OutputFiles({"--out": out})
    check_dpi(dpi)
    axes = {name: split_list(flag, lists.get(name), kind) or [None] for name, flag, kind in CURVE_AXES}
    combos = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    flags = "/".join(flag for _, flag, _ in CURVE_AXES)
    if solver().sigmas is not None and len(combos) > 1:
        raise ConfigError(f"--sigmas: a custom grid is one curve; drop the lists of {flags}")
    if len(combos) > 12:
        raise ConfigError(f"{flags}: {len(combos)} combinations; draw at most 12 in one figure")
    found = [load_recipe(path) for path in split_list("--recipe", recipes)]
    if found and solver().sigmas is not None:
        raise ConfigError("--sigmas: a custom grid and --recipe are both a grid; draw one of them")
    if len(combos) + len(found) > 12:
        raise ConfigError(f"--recipe: {len(combos) + len(found)} curves; draw at most 12 in one figure")
    plans = []
    for combo in combos:
        typed = {k: v for k, v in combo.items() if v is not None}
        config = solver(**typed)
        if found:  # the stock grids on the recipe's schedule, at its steps (what is typed wins)
            keep = {k: getattr(config, k) for k in (*typed, *solver.explicit) if k not in ("sigmas", "steps") or k in typed}
            config = stock_config(found[0]).with_options(**keep, **({} if "steps" in typed else {"steps": found[0].config.steps}))
        plan = build_plan(config)
        warn([f"{grid_label(plan)}: {w}" for w in plan.warnings], quiet)
        plans.append(plan)
    varying = tuple(name for name, values in axes.items() if len(values) > 1) or ("spacing", "steps")
    labels = [grid_label(plan, varying) for plan in plans]
    for recipe in found:
        plans.append(build_plan(recipe.config))
        labels.append(f"recipe {recipe.name} ({recipe.nfe} calls, {recipe.model})")
    fig = schedule_figure(plans, labels, title)
    with outputs:
        save_figure(fig, out, dpi)
    print_written(outputs.written, quiet)


def check_sample_outputs(plot, plot_samples, trace, trace_stride: int, dpi: int) -> None:
    check_figure_path("--plot", plot)
    check_figure_path("--plot-samples", plot_samples)
    require_suffix("--trace", trace, ".npz")
    if trace_stride < 1:
        raise ConfigError(f"--trace-stride: {trace_stride} is not allowed; it must be at least 1")
    check_dpi(dpi)


def write_sample_outputs(report, *, trace_recorder, plot, plot_samples, trace, dpi: int, title: str) -> None:
    """The files of ``dpmcli sample``: --plot, --plot-samples and --trace (those given)."""
    from ..plots import run_figure, samples_figure, save_figure

    if plot is not None:
        save_figure(run_figure(report.steps, report.final, title, report.result.attempts), plot, dpi)
    if plot_samples is not None:
        samples = report.result.samples.detach().cpu().double().numpy()
        paths = trace_recorder.trajectory_array() if trace_recorder is not None else None
        mixture = report.mixture
        subtitle = (
            f"mean log-likelihood {mixture['mean_log_likelihood']:.3g} "
            f"(exact {mixture['expected_log_likelihood']:.3g}), component-share TV {mixture['share_total_variation']:.3f}"
        )
        fig = samples_figure(report.prepared.model.mixture, samples, paths, title, subtitle)
        save_figure(fig, plot_samples, dpi)
    if trace is not None:
        arrays = trace_recorder.arrays(report.result.samples)
        arrays["final_sigma"] = np.array(report.prepared.plan.sigmas[-1])
        atomic_write(trace, lambda handle: np.savez_compressed(handle, **arrays))


def print_written(paths, quiet: bool) -> None:
    if not quiet:
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
