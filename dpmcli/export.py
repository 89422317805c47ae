"""What a compare report is written as: CSV, the Markdown summary, figures, the ``--out`` folder.

Run a sweep once, export it many ways, as ``dpmcli compare`` does::

    report = run_sweep(Sweep(...))
    document = report.document()
    text = markdown_summary(report, document)
    write_compare_folder(report, Path("results"), document=document)

No Typer or Rich here; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .images import image_grid
from .processes import describe_process
from .report import atomic_write, csv_text, dumps_json

CSV_COLUMNS = [
    "run", "solver", "algo", "order", "method", "startup", "solver_type", "spacing", "steps", "final_sigma", "coefficients", "compat",
    "kind", "nfe", "error", "error_metric", "error_max", "mode_flips", "mmd2", "strong_error", "log_likelihood_gap",
    "convergence_order", "best_at_nfe", "seconds", "status",
]
DASH = "—"  # a missing or non-finite number in compare's outputs (table and Markdown alike)
PANELS = 16  # at most this many solvers in a figure of samples


def compare_cell(value, digits: int = 3) -> str:
    """A number of compare's outputs: an em dash when it is missing or not finite."""
    if value is None or isinstance(value, bool):
        return DASH
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return DASH
    return f"{value:.{digits}g}"


def guidance_blocks(report) -> list:
    """[(scale or None, runs)]: one block per guidance scale, in the order of the sweep (one block without guidance)."""
    scales = list(dict.fromkeys(report.sweep.guidance))
    if scales == [None]:
        return [(None, list(report.runs))]
    return [(scale, [r for r in report.runs if r.get("guidance_scale") == scale]) for scale in scales]


def csv_columns(report) -> list[str]:
    """The fixed columns, then guidance and the model's quality numbers when a network ran."""
    extra = (["guidance_scale"] if any("guidance_scale" in r for r in report.runs) else []) + list(report.quality_columns)
    return CSV_COLUMNS[:-2] + extra + CSV_COLUMNS[-2:]


def compare_csv(report) -> str:
    """results.csv: one line per run."""
    return csv_text(report.runs, csv_columns(report))


def error_title(report) -> str:
    sweep = report.sweep
    process = "" if sweep.base.process == "vp" else f", {describe_process(sweep.base)}"
    return f"{sweep.model}{process}, {sweep.batch} samples, seed {sweep.seed}: error against NFE"


def save_error_figure(report, path: Path, dpi: int = 150) -> None:
    """The error-against-NFE figure (.png, .svg or .pdf)."""
    from .plots import error_figure, save_figure

    save_figure(error_figure(report.runs, error_title(report)), path, dpi)


def write_compare_folder(report, out: Path, *, document: dict | None = None, dpi: int = 150) -> None:
    """results.json, results.csv, summary.md, config.json, error_vs_nfe.png and (when there is one) samples.png.

    ``document`` is what results.json holds (default: ``report.document()``; the command line adds its gates).
    """
    from .plots import compare_samples_figure, save_figure

    document = report.document() if document is None else document
    out.mkdir(exist_ok=True)
    files = {
        "results.json": dumps_json(document),
        "results.csv": compare_csv(report),
        "summary.md": markdown_summary(report, document),
        "config.json": dumps_json(document["config"]),
    }
    for name, text in files.items():
        atomic_write(out / name, lambda handle, text=text: handle.write(text.encode()))
    save_error_figure(report, out / "error_vs_nfe.png", dpi)
    if report.mixture is None and report.model is not None and report.model.has_images:
        write_image_panels(report, out / "samples.png", dpi)
    elif report.mixture is not None and report.mixture.dims == 2:
        panels = sample_panels(report)
        if panels:
            save_figure(compare_samples_figure(report.mixture, panels, f"{report.sweep.model}: final samples per solver"), out / "samples.png", dpi)


def _panel_steps(report) -> int | None:
    """The step count the sample figures show: the second-smallest of the sweep (or the only one)."""
    steps = sorted({r["steps"] for r in report.runs if r["status"] == "ok"})
    if not steps:
        return None
    return steps[1] if len(steps) > 1 else steps[0]


def write_image_panels(report, path: Path, dpi: int = 150, per_run: int = 10) -> None:
    """Image models: one row per solver at the shared step count, the first ``per_run`` samples each."""
    from .plots import image_rows_figure, save_figure

    chosen = _panel_steps(report)
    rows = [r for r in report.runs if r["steps"] == chosen and r["status"] == "ok"]
    rows = sorted(rows, key=lambda r: (r["kind"], r["solver"]))[:PANELS]
    if not rows:
        return
    pictures = []
    for row in rows:
        images = report.model.to_images(torch.from_numpy(report.samples[row["run"]][:per_run]))
        label = f"{row['solver']}\nerror {row['error']:.3g}" if row.get("error") is not None else row["solver"]
        pictures.append((label, image_grid(images, columns=per_run)))
    title = f"{report.sweep.model}: the first {per_run} samples of each solver at {rows[0]['steps']} steps (shared x_T)"
    save_figure(image_rows_figure(pictures, title), path, dpi)


def sample_panels(report) -> list:
    """2-D mixtures: (solver, samples, caption) per solver at the shared step count."""
    chosen = _panel_steps(report)
    if chosen is None:
        return []
    panels = []
    for row in sorted(report.runs, key=lambda r: (r["kind"], r["solver"])):
        if row["steps"] != chosen or row["status"] != "ok":
            continue
        caption = f"{chosen} steps, " + (
            f"L2 error {row['error']:.3g}, flips {row['mode_flips']:.1%}" if row["kind"] == "ode" else f"MMD² {row['mmd2']:.2e}"
        )
        panels.append((row["solver"], report.samples[row["run"]], caption))
    return panels[:PANELS]


def _md_number(value) -> str:
    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    if value is None or isinstance(value, (int, float)):
        return compare_cell(value)
    return str(value) if str(value) else DASH


def markdown_summary(report, document: dict | None = None) -> str:
    """summary.md: the runs of each guidance block sorted by error, the fitted orders, what was skipped, the gates."""
    document = report.document() if document is None else document
    sweep = document["config"]
    lines = [
        "# dpmcli compare",
        "",
        f"Model `{sweep['model']}`, {sweep['batch']} samples, seed {sweep['seed']}, dtype {sweep['dtype']}; "
        f"{len(report.runs)} runs, {len(report.skipped)} skipped, {report.seconds:.1f} s.",
        "",
        f"- ODE ground truth: {report.reference['ode']}",
        f"- SDE ground truth: {report.reference['sde']}",
    ]
    middle = (
        {"mode_flips": "mode flips", "strong_error": "strong error", "log_likelihood_gap": "log-lik gap"}
        if report.mixture is not None else report.quality_columns
    )
    for scale, block in guidance_blocks(report):
        where = f" at guidance scale {scale:g}, against its own references" if scale is not None else ""
        lines += [
            "",
            f"## Runs{where}: sorted by error, ★ = best at its NFE",
            "",
            "| | solver | steps | NFE | error | metric | " + " | ".join(middle.values()) + " | seconds |",
            "|---|---|---|---|---|---|" + "---|" * len(middle) + "---|",
        ]
        lines += [_markdown_row(r, middle) for r in block]
    lines += ["", "## Convergence orders (slope of log error against log NFE)", "",
              "| solver | metric | nominal | expected | fitted |", "|---|---|---|---|---|"]
    for o in report.orders:
        lines.append(
            f"| {o['solver']} | {o['metric']} | {_md_number(o['nominal_order'])} | {_md_number(o['expected_order'])} | "
            f"{_md_number(o['fitted_order'])} |"
        )
    if report.skipped:
        lines += ["", "## Skipped", ""] + [f"- {s['run']}: {s['reason']}" for s in report.skipped]
    gates = document.get("gates", {})
    if gates:
        lines += ["", "## Gates", "", "passed" if gates.get("passed") else "**failed**"]
        lines += [f"- FAIL {f}" for f in gates.get("failures", [])] + [f"- note: {n}" for n in gates.get("notes", [])]
    return "\n".join(lines) + "\n"


def _markdown_row(r: dict, middle: dict) -> str:
    cells = " | ".join(_md_number(r.get(key)) for key in middle)
    steps = "auto" if r.get("method") == "adaptive" else _md_number(r.get("steps"))
    return (
        f"| {_md_number(r.get('best_at_nfe'))} | {r['solver']} | {steps} | {_md_number(r.get('nfe'))} | "
        f"{_md_number(r.get('error'))} | {r['status'] if r['status'] != 'ok' else r.get('error_metric', DASH)} | {cells} | "
        f"{_md_number(r.get('seconds'))} |"
    )
