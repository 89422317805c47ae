"""Matplotlib figures: schedules, per-step statistics of a run, final samples of 2-D models.

Figures are built with the ``Figure`` API (no pyplot state, nothing opens a window), in one
style with a colour-blind-safe palette (Okabe & Ito), and written deterministically: the
same figure gives the same bytes (no dates or software versions in the metadata).
``import dpmcli`` does not import this module.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from .errors import ConfigError
from . import report  # report.atomic_path is looked up per call (tests stand in a full disk)

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
BAD = "#D00000"
FORMATS = ("png", "svg", "pdf")
STYLE = {
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "font.family": "DejaVu Sans",
    "svg.hashsalt": "dpmcli",
    "svg.fonttype": "path",
    "pdf.compression": 6,
    "savefig.bbox": "tight",
}
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None},
}


def figure_format(option: str, path: Path) -> str:
    """The format of an output path from its extension, or a one-line ConfigError."""
    ext = path.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ConfigError(f"{option}: {path} has extension {path.suffix or '(none)'!r}; use .png, .svg or .pdf")
    return ext


def new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: Path, dpi: int = 150) -> None:
    """Write ``fig`` atomically (temporary file, then rename), with deterministic metadata."""
    fmt = figure_format("--out", Path(path))
    with report.atomic_path(path, suffix=f".{fmt}") as tmp, matplotlib.rc_context(STYLE):
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_METADATA[fmt])


# ---------------------------------------------------------------- schedules


def grid_label(plan, varying: tuple[str, ...] = ("spacing", "beta_schedule", "steps")) -> str:
    cfg = plan.config
    parts = []
    if "spacing" in varying:
        parts.append(cfg.spacing + (f" (rho {cfg.rho:g})" if cfg.spacing == "karras" and cfg.rho != 7.0 else ""))
    if "beta_schedule" in varying:
        parts.append(cfg.beta_schedule)
    if "steps" in varying:
        parts.append(f"{plan.steps} steps")
    if "process" in varying:
        parts.append(cfg.process)
    if "flow_shift" in varying:
        parts.append(f"shift {cfg.shift:g}")
    return ", ".join(parts)


def _bad_steps(plan) -> np.ndarray:
    """Indices of steps of zero length or whose timestep repeats the previous one."""
    zero = np.nonzero(plan.h == 0)[0]
    repeated = np.nonzero(plan.timesteps[1:] == plan.timesteps[:-1])[0] + 1
    return np.union1d(zero, repeated).astype(int)


def _continuous(plan, values_of_lambda):
    """The schedule between grid points: every training timestep placed at its fractional step."""
    ts = plan.timesteps
    if len(ts) < 2 or np.any(np.diff(ts) >= 0):
        return None, None
    tau = np.linspace(ts[0], ts[-1], 400)
    steps = np.interp(tau, ts[::-1], np.arange(len(ts), dtype=float)[::-1])
    return steps, values_of_lambda(plan.schedule.lambda_at(tau))


def schedule_figure(plans, labels, title: str | None = None) -> Figure:
    """Four panels: sigma, lambda, alpha_t / sigma_t and h against step, one colour per grid."""
    fig = new_figure(11.0, 7.6)
    with matplotlib.rc_context(STYLE):
        ax_sigma, ax_lambda, ax_coef, ax_h = fig.subplots(2, 2).ravel()
        for k, (plan, label) in enumerate(zip(plans, labels)):
            colour = PALETTE[k % len(PALETTE)]
            n = plan.steps
            steps = np.arange(n)
            bad = _bad_steps(plan)
            dot = 3.5 if n <= 60 else 0.0  # long grids read better as lines
            cross = 9 if n <= 60 else 5
            panels = (
                (ax_sigma, plan.sigmas[:n], plan.schedule.sigma_of),
                (ax_lambda, plan.lambdas[:n], lambda lam: lam),
            )
            for ax, values, of_lambda in panels:
                cs, cv = _continuous(plan, of_lambda)
                if cs is not None:
                    ax.plot(cs, cv, color=colour, alpha=0.25, linewidth=3.0, solid_capstyle="round")
                ax.plot(steps, values, "o-", color=colour, label=label, markersize=dot, linewidth=1.2)
                if len(bad):
                    ax.plot(steps[bad], values[bad], "x", color=BAD, markersize=cross, markeredgewidth=1.5)
            final = float(plan.sigmas[-1])
            if final > 0:
                ax_sigma.plot([n - 1, n], [plan.sigmas[n - 1], final], ":", color=colour, linewidth=1.0)
                ax_sigma.plot([n], [final], "s", color=colour, markersize=4, markerfacecolor="white")
                ax_lambda.plot([n - 1, n], [plan.lambdas[n - 1], plan.lambdas[n]], ":", color=colour, linewidth=1.0)
                ax_lambda.plot([n], [plan.lambdas[n]], "s", color=colour, markersize=4, markerfacecolor="white")
            ax_coef.plot(steps, plan.alpha_t[:n], "o-", color=colour, markersize=dot * 0.85, linewidth=1.2, label=f"alpha_t, {label}")
            ax_coef.plot(steps, plan.sigma_t[:n], "s--", color=colour, markersize=dot * 0.85, linewidth=1.2, label=f"sigma_t, {label}")
            finite = np.isfinite(plan.h)
            ax_h.plot(steps[finite], plan.h[finite], "o-", color=colour, markersize=dot, linewidth=1.2, label=label)
            if len(bad):
                ax_h.plot(steps[bad], plan.h[bad], "x", color=BAD, markersize=cross, markeredgewidth=1.5)
        ax_sigma.set_yscale("log")
        ax_sigma.set_title("grid sigma (vp, edm: sigma_t / alpha_t; flow: s = sigma_t)")
        ax_sigma.set_ylabel("sigma (log scale)")
        ax_lambda.set_title("half log-SNR lambda = log(alpha_t / sigma_t)")
        ax_lambda.set_ylabel("lambda")
        ax_coef.set_title("alpha_t and sigma_t of x = alpha_t x0 + sigma_t eps")
        ax_coef.set_ylabel("alpha_t (solid), sigma_t (dashed)")
        ax_coef.set_ylim(-0.03, 1.03)
        ax_h.set_title("step size in lambda (step to sigma 0 not drawn: h = inf)")
        ax_h.set_ylabel("h = lambda_next - lambda")
        for ax in (ax_sigma, ax_lambda, ax_coef, ax_h):
            ax.set_xlabel("step")
        handles, names = ax_sigma.get_legend_handles_labels()
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="grey", alpha=0.35, linewidth=3.0))
        names.append("continuous schedule")
        if any(p.sigmas[-1] > 0 for p in plans):
            handles.append(Line2D([], [], marker="s", linestyle="none", color="grey", markerfacecolor="white"))
            names.append("final sigma")
        if any(p.sigmas[-1] == 0 for p in plans):
            ax_sigma.text(0.02, 0.03, "final sigma 0 lies off the log axis", transform=ax_sigma.transAxes, fontsize=8, color="dimgrey")
        if any(len(_bad_steps(p)) for p in plans):
            handles.append(Line2D([], [], marker="x", linestyle="none", color=BAD, markeredgewidth=2))
            names.append("zero-length step or repeated timestep")
        ax_sigma.legend(handles, names, loc="upper right")
        fig.suptitle(title or "Noise schedule and step grid", fontsize=13)
    return fig


# ---------------------------------------------------------------- a sampling run

_ORDER_SHADES = {1: "#FFFFFF", 2: "#F1F1F1", 3: "#E2E2E2"}


def _shade_orders(ax, orders) -> None:
    for i, order in enumerate(orders):
        shade = _ORDER_SHADES.get(int(order), "#D0D0D0")
        if shade != "#FFFFFF":
            ax.axvspan(i - 0.5, i + 0.5, color=shade, zorder=0, linewidth=0)


def run_figure(rows: list[dict], final: dict, title: str, attempts: list[dict] | None = None) -> Figure:
    """Latent and x0 statistics against step (mean, std, min/max band, norm), orders shaded.

    With ``attempts`` (an adaptive run) the bottom panel shows the step sizes the controller
    tried against lambda, accepted and rejected, instead of the order per step.
    """
    fig = new_figure(11.0, 7.2)
    with matplotlib.rc_context(STYLE):
        grid = fig.add_gridspec(3, 2, height_ratios=[3, 3, 1.5 if attempts else 0.9])
        panels = {
            ("latent", 0): fig.add_subplot(grid[0, 0]),
            ("latent", 1): fig.add_subplot(grid[1, 0]),
            ("x0", 0): fig.add_subplot(grid[0, 1]),
            ("x0", 1): fig.add_subplot(grid[1, 1]),
        }
        ax_order = fig.add_subplot(grid[2, :])
        # one point per model call (several per step for singlestep methods)
        steps = np.arange(len(rows), dtype=float)
        calls = any(r.get("stage", 0) for r in rows)
        axis_name = "model call" if calls else "step"
        orders = [r["order"] for r in rows]
        n = len(rows)
        for kind, prefix, heading in (("latent", "", "latent x (input of each step)"), ("x0", "x0_", "x0 prediction")):
            get = lambda key: np.array([r[prefix + key] for r in rows], dtype=float)
            xs, mean, std, lo, hi, norm = steps, get("mean"), get("std"), get("min"), get("max"), get("norm")
            if kind == "latent":  # the final samples, after the last step
                xs = np.append(steps, n)
                mean, std, lo, hi, norm = (np.append(a, final[k]) for a, k in ((mean, "mean"), (std, "std"), (lo, "min"), (hi, "max"), (norm, "norm")))
            top, bottom = panels[(kind, 0)], panels[(kind, 1)]
            for ax in (top, bottom):
                _shade_orders(ax, orders)
            top.fill_between(xs, lo, hi, color=PALETTE[0], alpha=0.15, linewidth=0, label="min .. max")
            top.plot(xs, mean, "o-", color=PALETTE[0], markersize=3, label="mean")
            top.plot(xs, mean + std, "--", color=PALETTE[1], linewidth=1.1, label="mean ± std")
            top.plot(xs, mean - std, "--", color=PALETTE[1], linewidth=1.1)
            top.set_title(heading)
            top.set_ylabel("value")
            top.legend(loc="best")
            bottom.plot(xs, std, "o-", color=PALETTE[1], markersize=3, label="std")
            bottom.plot(xs, norm, "s-", color=PALETTE[2], markersize=3, label="mean per-sample L2 norm")
            bottom.set_ylabel("std, norm")
            bottom.set_xlabel(axis_name + (" (the last point: final samples)" if kind == "latent" else ""))
            bottom.legend(loc="best")
        if attempts:
            good = [a for a in attempts if a["accepted"]]
            bad = [a for a in attempts if not a["accepted"]]
            ax_order.plot([a["lambda"] for a in good], [a["h"] for a in good], "o-", color=PALETTE[2], markersize=3.5, label="accepted")
            if bad:
                ax_order.plot([a["lambda"] for a in bad], [a["h"] for a in bad], "x", color=BAD, markersize=6, label="rejected")
            ax_order.set_yscale("log")
            ax_order.set_xlabel("lambda at the start of the step")
            ax_order.set_ylabel("h (log)")
            ax_order.legend(loc="best")
            ax_order.set_title(f"step sizes chosen by the controller: {len(good)} accepted, {len(bad)} rejected", fontsize=9.5)
        else:
            ax_order.step(steps, orders, where="mid", color=PALETTE[3])
            ax_order.plot(steps, orders, "o", color=PALETTE[3], markersize=3)
            ax_order.set_ylabel("order")
            ax_order.set_xlabel(axis_name)
            ax_order.set_yticks(sorted(set(orders)))
            ax_order.set_ylim(min(orders) - 0.5, max(orders) + 0.5)
            ax_order.set_xlim(-0.5, n + 0.5)
            ax_order.set_title("order used per step (shaded in the panels above: darker = higher)", fontsize=9.5)
        fig.suptitle(_wrap(title, 120), fontsize=12)
    return fig


def _wrap(title: str, width: int) -> str:
    import textwrap

    if not title:
        return title
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def _density_panel(ax, mixture, centre, reach) -> None:
    import torch

    grid = np.linspace(-reach, reach, 300)
    gx, gy = np.meshgrid(grid + centre[0], grid + centre[1])
    points = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
    log_density = mixture.log_prob(points).numpy().reshape(gx.shape)
    levels = np.linspace(log_density.max() - 12, log_density.max(), 9)
    ax.contourf(gx, gy, log_density, levels=levels, cmap="Greys", alpha=0.45)
    ax.contour(gx, gy, log_density, levels=levels, colors="grey", linewidths=0.5, linestyles="solid")
    ax.set_aspect("equal")
    ax.set_xlim(centre[0] - reach, centre[0] + reach)
    ax.set_ylim(centre[1] - reach, centre[1] + reach)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")


def samples_figure(mixture, samples: np.ndarray, trajectories: np.ndarray | None, title: str, subtitle: str = "") -> Figure:
    """Two panels over the mixture's log-density contours: trajectories from x_T, and the final samples."""
    if mixture.dims != 2:
        raise ConfigError(f"--plot-samples: the model is {mixture.dims}-D; sample plots need a 2-D model such as ring")
    fig = new_figure(12.0, 6.4)
    with matplotlib.rc_context(STYLE):
        ax_paths, ax_samples = fig.subplots(1, 2)
        centre = mixture.means.mean(0)
        reach = max(np.abs(mixture.means - centre).max() + 4 * mixture.stds.max(), 1e-3)
        wide = reach
        if trajectories is not None:
            wide = max(reach, float(np.abs(trajectories - centre).max()) * 1.05)
        _density_panel(ax_paths, mixture, centre, wide)
        if trajectories is not None:
            for k in range(trajectories.shape[1]):
                path = trajectories[:, k, :]
                ax_paths.plot(path[:, 0], path[:, 1], "-", color=PALETTE[3], linewidth=1.0, alpha=0.9, zorder=4,
                              label="trajectory" if k == 0 else None)
                ax_paths.plot(path[0, 0], path[0, 1], "o", color=PALETTE[3], markersize=4, markerfacecolor="white", zorder=5,
                              label="x_T" if k == 0 else None)
                ax_paths.plot(path[-1, 0], path[-1, 1], "o", color=PALETTE[3], markersize=4, zorder=5,
                              label="final sample" if k == 0 else None)
            ax_paths.legend(loc="upper right")
        ax_paths.set_title(f"{0 if trajectories is None else trajectories.shape[1]} trajectories from x_T")
        _density_panel(ax_samples, mixture, centre, reach)
        ax_samples.scatter(samples[:, 0], samples[:, 1], s=5, color=PALETTE[0], alpha=0.6, linewidths=0, zorder=3)
        ax_samples.set_title(_wrap(f"{len(samples)} final samples" + (f": {subtitle}" if subtitle else ""), 60))
        fig.suptitle(_wrap(title, 110), fontsize=11.5)
    return fig


def count_lines(fig: Figure) -> int:
    """Number of Line2D artists drawn in the figure's axes (for tests and sanity checks)."""
    return sum(len(ax.get_lines()) for ax in fig.axes)


# ---------------------------------------------------------------- compare

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
_DASHES = ["-", "--", "-.", ":"]


# (kind, measured against a reference run of a network?) -> the error axis
Y_LABELS = {
    ("ode", False): "median L2 error vs exact ODE solution",
    ("sde", False): "strong error vs fine-step SDE solution",
    ("ode", True): "median L2 distance to the reference run",
    ("sde", True): "strong error vs the reference SDE run",
}


def error_figure(runs: list[dict], title: str) -> Figure:
    """Error against NFE on log-log axes, one line per solver, with reference slopes 1, 2, 3."""
    kinds = [k for k in ("ode", "sde") if any(r["kind"] == k and r.get("error") for r in runs)]
    fig = new_figure(6.4 * max(1, len(kinds)) + 1.2, 5.6)
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            metric = "error" if kind == "ode" else "strong_error"
            solvers: dict = {}
            for row in runs:
                if row["kind"] == kind and row.get(metric):
                    solvers.setdefault(row["solver"], []).append((row["nfe"], row[metric]))
            algos = sorted({s.split()[0] for s in solvers})
            for k, (solver, points) in enumerate(sorted(solvers.items())):
                points.sort()
                algo_index = algos.index(solver.split()[0])
                order = next((int(w) for a, w in zip(solver.split(), solver.split()[1:]) if a == "order" and w.isdigit()), 1)
                ax.plot(
                    [p[0] for p in points], [p[1] for p in points],
                    linestyle=_DASHES[algo_index % len(_DASHES)], marker=_MARKERS[k % len(_MARKERS)],
                    color=PALETTE[(order - 1) % len(PALETTE)] if len(solvers) <= 12 else PALETTE[k % len(PALETTE)],
                    label=solver, markersize=5,
                )
            all_points = [p for pts in solvers.values() for p in pts]
            if all_points:
                nfe_lo, nfe_hi = min(p[0] for p in all_points), max(p[0] for p in all_points)
                top = max(p[1] for p in all_points)
                x = np.array([nfe_lo, nfe_hi], dtype=float)
                for slope in (1, 2, 3):
                    ax.plot(x, top * (x / nfe_lo) ** (-slope), color="grey", linewidth=0.8, linestyle=(0, (2, 3)), alpha=0.8)
                    ax.annotate(f"slope -{slope}", (x[1], top * (x[1] / nfe_lo) ** (-slope)), fontsize=7.5, color="grey",
                                xytext=(3, 0), textcoords="offset points", va="center")
            ax.set_xscale("log")
            ax.set_yscale("log")
            if all_points:
                ticks = sorted({p[0] for p in all_points})
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("NFE (model evaluations)")
            against_run = any(r["kind"] == kind and r.get("error_metric") == "l2_median_vs_reference" for r in runs)
            ax.set_ylabel(Y_LABELS[kind, against_run])
            ax.set_title("ODE solvers" if kind == "ode" else "SDE solvers (same Brownian path)")
            ax.legend(loc="lower left", fontsize=7)
        fig.suptitle(_wrap(title, 120), fontsize=12)
    return fig


def compare_samples_figure(mixture, panels: list[tuple[str, np.ndarray, str]], title: str) -> Figure:
    """One panel per solver: its final samples over the mixture's density, titled with its error."""
    if mixture.dims != 2:
        raise ConfigError("compare: sample panels need a 2-D model")
    count = len(panels)
    cols = min(4, count)
    rows = (count + cols - 1) // cols
    fig = new_figure(3.4 * cols, 3.5 * rows + 0.6)
    with matplotlib.rc_context(STYLE):
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
        centre = mixture.means.mean(0)
        reach = max(np.abs(mixture.means - centre).max() + 4 * mixture.stds.max(), 1e-3)
        for ax, (label, samples, caption) in zip(axes, panels):
            _density_panel(ax, mixture, centre, reach)
            ax.scatter(samples[:, 0], samples[:, 1], s=2, color=PALETTE[0], alpha=0.5, linewidths=0, zorder=3)
            ax.set_title(_wrap(f"{label}\n{caption}", 44), fontsize=8)
            ax.set_xlabel("x[0]", fontsize=8)
            ax.set_ylabel("x[1]", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes[count:]:
            ax.set_visible(False)
        fig.suptitle(_wrap(title, 120), fontsize=12)
    return fig


def image_rows_figure(rows: list[tuple[str, np.ndarray]], title: str) -> Figure:
    """Image models in compare: one row of final samples per solver, labelled on the left.

    ``rows`` holds (label, picture) with picture a uint8 grid from :func:`dpmcli.images.image_grid`.
    """
    height, width = rows[0][1].shape[:2]
    aspect = width / max(height, 1)
    fig = new_figure(min(14.0, 1.2 * aspect + 3.0), 0.9 * len(rows) + 0.8)
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(len(rows), 1, squeeze=False).ravel()
        for ax, (label, picture) in zip(axes, rows):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(_wrap(label, 28), rotation=0, ha="right", va="center", fontsize=8)
            for spine in ax.spines.values():
                spine.set_visible(False)
        fig.suptitle(_wrap(title, 110), fontsize=10)
    return fig
