"""Rich tables for the terminal."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

from ..compare import NOISE_DEFAULTS, SWEEP_FIELDS
from ..export import DASH, compare_cell, guidance_blocks
from ..processes import describe_process


def num(value, digits: int = 5) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def shift_note(cfg) -> str | None:
    """A flow shift S is the unshifted grid translated in lambda by -ln S: say so under the table."""
    if cfg.process != "flow" or cfg.shift == 1.0:
        return None
    return (
        f"flow shift {cfg.shift:.6g}: s' = S s / (1 + (S - 1) s), i.e. every lambda is the unshifted one "
        f"minus ln S = {math.log(cfg.shift):.6g}; sigma is s"
    )


def config_line(cfg) -> str:
    if cfg.method == "adaptive":
        return (
            f"{cfg.algo} · adaptive DPM-Solver-{cfg.order - 1}{cfg.order} · atol {cfg.atol:g} · rtol {cfg.rtol:g} · "
            f"{cfg.coefficients} weights · {describe_process(cfg)} · final sigma {cfg.final_sigma} · {cfg.prediction_type} prediction"
        )
    parts = [
        f"{cfg.algo}",
        f"eta {cfg.sde_eta:g}, s_noise {cfg.s_noise:g}" if cfg.is_sde and (cfg.eta is not None or cfg.s_noise != 1.0) else None,
        f"singlestep DPM-Solver-{cfg.order}" + (f" (NFE budget {cfg.nfe})" if cfg.nfe else "")
        if cfg.method == "singlestep" and not cfg.ancestral else None,
        ("DPM-Solver++ SDE" if cfg.method == "singlestep" else f"ancestral order {cfg.order}") if cfg.ancestral else None,
        f"order {cfg.order}" + (" with singlestep start-up" if cfg.startup == "singlestep" and cfg.order >= 3 else "")
        if cfg.method == "multistep" else None,
        f"{cfg.solver_type}" if cfg.order == 2 and cfg.coefficients == "published" and cfg.method == "multistep" else None,
        f"{cfg.coefficients} weights",
        f"{cfg.spacing} spacing",
        describe_process(cfg),
        f"final sigma {cfg.final_sigma}" + (f" (final decay {cfg.final_decay:.3g})" if cfg.final_decay else ""),
        f"{cfg.prediction_type} prediction",
        f"compat {cfg.compat}" if cfg.compat != "none" else None,
    ]
    return " · ".join(p for p in parts if p)


def schedule_table(plan) -> Table:
    extra = plan.nfe - plan.steps
    table = Table(
        title=f"Plan: {plan.steps} steps, NFE {plan.nfe}" + (f" ({extra} extra model calls)" if extra > 0 else ""),
        caption="\n".join(
            line for line in (config_line(plan.config), plan.order_note, shift_note(plan.config),
                              f"final sigma = {num(float(plan.sigmas[-1]))}") if line
        ),
        header_style="bold",
    )
    columns = ["step", "timestep", "sigma", "alpha_t", "sigma_t", "lambda", "h", "order"]
    if extra:
        columns.append("calls")
    for name in columns:
        table.add_column(name, justify="right")
    for row in plan.step_table():
        cells = [
            str(row["step"]),
            num(row["timestep"], 7),
            num(row["sigma"]),
            num(row["alpha_t"]),
            num(row["sigma_t"]),
            num(row["lambda"]),
            num(row["h"]),
            str(row["order"]),
        ]
        if extra:
            cells.append(str(row["evaluations"]))
        table.add_row(*cells)
    if plan.config.method == "adaptive":
        table.caption += "\nadaptive: the controller chooses the steps at run time; the table shows the range it covers"
    return table


def beside_table(plan, beside: dict) -> Table:
    """A recipe's sigmas next to stock grids' with its steps (``schedule --recipe``)."""
    table = Table(title="The recipe's grid beside stock grids (sigma at each grid point)", header_style="bold")
    for name in ("point", "recipe", *beside):
        table.add_column(name, justify="right")
    for i, sigma in enumerate(plan.sigmas):
        table.add_row(str(i), num(float(sigma)), *[num(values[i]) if i < len(values) else "—" for values in beside.values()])
    return table


def sample_tables(report) -> list:
    plan = report.prepared.plan
    steps = Table(
        title="Per-step statistics: latent x (at the step's sigma) and the x0 prediction",
        caption=f"{config_line(plan.config)}\n{plan.order_note}",
        header_style="bold",
    )
    columns = [
        ("step", "step"),
        ("timestep", "t"),
        ("sigma", "sigma"),
        ("lambda", "lambda"),
        ("order", "ord"),
        ("mean", "mean"),
        ("std", "std"),
        ("min", "min"),
        ("max", "max"),
        ("norm", "norm"),
        ("x0_mean", "x0 mean"),
        ("x0_std", "x0 std"),
        ("x0_min", "x0 min"),
        ("x0_max", "x0 max"),
        ("x0_norm", "x0 norm"),
        ("nonfinite", "nan/inf"),
    ]
    for _, label in columns:
        steps.add_column(label, justify="right")
    for row in report.steps:
        steps.add_row(*[num(row[key], 4) if not isinstance(row[key], int) else str(row[key]) for key, _ in columns])

    final = report.final
    mixture = report.mixture
    summary = Table(title=f"Final samples ({report.prepared.model.name})", show_header=False, header_style="bold")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("NFE", str(report.result.nfe))
    summary.add_row("seconds", f"{report.result.seconds:.3f}")
    summary.add_row("samples", " x ".join(str(n) for n in report.result.samples.shape))
    summary.add_row("mean / std", f"{num(final['mean'])} / {num(final['std'])}")
    summary.add_row("min / max", f"{num(final['min'])} / {num(final['max'])}")
    summary.add_row("mean L2 norm", num(final["norm"]))
    if mixture is None:
        return [steps, summary, *quality_tables(report.quality, summary)]
    gap = mixture["mean_log_likelihood"] - mixture["expected_log_likelihood"]
    summary.add_row(
        "mean log-likelihood under the mixture",
        f"{num(mixture['mean_log_likelihood'])} (exact expectation {num(mixture['expected_log_likelihood'])} "
        f"± {num(mixture['expected_log_likelihood_stderr'], 2)}; gap {num(gap, 3)})",
    )
    summary.add_row("share per component vs weight (total variation)", num(mixture["share_total_variation"], 3))

    shares = Table(title="Samples per mixture component", header_style="bold")
    shares.add_column("component", justify="right")
    shares.add_column("share", justify="right")
    shares.add_column("weight", justify="right")
    shares.add_column("", justify="left")
    for k, (share, weight) in enumerate(zip(mixture["component_shares"], mixture["component_weights"])):
        bar = Text("█" * int(round(40 * share)), style="cyan")
        shares.add_row(str(k), f"{share:.3f}", f"{weight:.3f}", bar)
    return [steps, summary, shares]


QUALITY_LABELS = {
    "classifier_confidence": "classifier confidence (mean top probability)",
    "class_accuracy": "class accuracy (the requested digit)",
    "class_shares": "digit shares",
    "nn_distance": "distance to the nearest training digit (median L2)",
    "real_classifier_confidence": "  real held-out digits: confidence",
    "real_class_accuracy": "  real held-out digits: accuracy",
    "real_nn_distance": "  real held-out digits: nearest-training distance",
}


def _label(key: str) -> str:
    return key.replace("_", " ")


def quality_tables(quality: dict, summary: Table) -> list:
    """A learned model's sample-quality numbers: scalars go into ``summary``, lists of shares get a bar table."""
    tables = []
    for key, value in quality.items():
        if isinstance(value, (list, tuple)):
            value = dict(enumerate(value))
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            shares = Table(title=QUALITY_LABELS.get(key, _label(key)).capitalize(), header_style="bold")
            shares.add_column("", justify="right")
            shares.add_column("share", justify="right")
            shares.add_column("", justify="left")
            for name, share in value.items():
                shares.add_row(str(name), f"{share:.3f}", Text("█" * int(round(40 * share)), style="cyan"))
            tables.append(shares)
        elif key != "samples" and (isinstance(value, (int, float, str)) or value is None):
            text = "—" if value is None else num(value) if isinstance(value, float) else str(value)
            summary.add_row(QUALITY_LABELS.get(key, _label(key)), text)
    return tables


def _sweep_cell(row: dict, name: str) -> str:
    """A run's value of a swept field; --eta and --s-noise are in a row only where they differ from the default."""
    if name in NOISE_DEFAULTS:
        value = row.get(name, NOISE_DEFAULTS[name])
        return "—" if row.get("kind") != "sde" else ("1" if value is None else f"{value:g}")
    if name == "from":  # a recipe's run, a peer's, or the sweep's own
        return f"recipe {row['recipe']}" if row.get("recipe") else (row.get("peer") or "dpmcli")
    if name == "corrector":
        return row.get("corrector", "none")
    return str(row.get(name, "—"))


def compare_tables(report, document) -> list:
    varying = [f for f in (*SWEEP_FIELDS, *NOISE_DEFAULTS) if len(report.sweep.axis(f)) > 1 and f != "steps"]
    shown = [
        f for f in ("algo", "order", "method", "startup", "solver_type", "spacing", "final_sigma", "coefficients", "compat", *NOISE_DEFAULTS)
        if f in varying or f in ("algo", "order")
    ]
    if any(r.get("corrector") for r in report.runs):
        shown.append("corrector")
    if any(r.get("recipe") or r.get("peer") for r in report.runs):
        shown.insert(0, "from")
    exact = report.mixture is not None
    quality = report.quality_columns
    middle = ("mode flips", "strong err", "log-lik gap") if exact else tuple(quality.values())
    caption = f"ODE: {report.reference['ode']}\nSDE: {report.reference['sde']}"
    blocks = guidance_blocks(report)
    out = []
    for number, (scale, block) in enumerate(blocks):
        where = f", guidance scale {scale:g} against its own references" if scale is not None else ""
        runs = Table(
            title=f"{len(block)} runs on {report.sweep.model} ({report.sweep.batch} samples){where}; sorted by error, "
            "★ best at its NFE",
            caption=caption if number == len(blocks) - 1 else None,
            header_style="bold",
        )
        runs.add_column("")
        for name in shown:
            runs.add_column(name.replace("_", " "))
        for name in ("steps", "NFE", "error", "metric", *middle, "seconds"):
            runs.add_column(name, justify="right")
        for r in block:
            error = r.get("error")
            if exact:
                flips = r.get("mode_flips")
                extra = (
                    f"{flips:.1%}" if compare_cell(flips) != DASH else DASH,
                    compare_cell(r.get("strong_error")),
                    compare_cell(r.get("log_likelihood_gap")),
                )
            else:
                extra = tuple(compare_cell(r.get(key)) for key in quality)
            runs.add_row(
                "★" if r.get("best_at_nfe") else "",
                *[_sweep_cell(r, name) for name in shown],
                "auto" if r.get("method") == "adaptive" else str(r["steps"]),
                str(r["nfe"]),
                compare_cell(error) if compare_cell(error) != DASH else f"[red]{r['status']}[/red]",
                r.get("error_metric", DASH).replace("l2_median_vs_reference", "L2 vs ref").replace("l2_median", "L2 median"),
                *extra,
                compare_cell(r.get("seconds"), 2),
            )
        out.append(runs)
    orders = Table(title="Empirical convergence order per solver (slope of log error against log NFE)", header_style="bold")
    for name in ("solver", "metric", "nominal", "expected", "fitted"):
        orders.add_column(name, justify="left" if name in ("solver", "metric") else "right")
    for o in report.orders:
        fitted = o["fitted_order"]
        expected = o["expected_order"]
        style = "" if fitted is None or expected is None or fitted >= expected - 0.3 else "yellow"
        orders.add_row(
            o["solver"], "strong error" if o["metric"] == "strong_error" else "L2 error",
            str(o["nominal_order"]), DASH if expected is None else str(expected),
            Text(compare_cell(fitted), style=style),
        )
    out.append(orders)
    gates = document.get("gates", {})
    if any(gates.get(k) is not None for k in ("max_error", "baseline", "min_order")):
        out.append(Text("gates: passed" if gates["passed"] else f"gates: {len(gates['failures'])} failure(s)",
                        style="green" if gates["passed"] else "bold red"))
    return out
