"""``dpmcli compare``: parse the sweep, run it with a progress bar, render, write files, apply gates."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..errors import EXIT_GATE_FAILED, EXIT_NUMERICAL, ConfigError
from ..report import OutputFiles
from .options import check_format, split_list

FORMATS = ("table", "json", "csv", "markdown")
CSV_COLUMNS = [
    "run", "solver", "algo", "order", "method", "startup", "solver_type", "spacing", "steps", "final_sigma", "coefficients", "compat",
    "kind", "nfe", "error", "error_metric", "error_max", "mode_flips", "mmd2", "strong_error", "log_likelihood_gap",
    "convergence_order", "best_at_nfe", "seconds", "status",
]


def _load_baseline(path: Path) -> dict:
    if Path(path).is_dir():
        raise ConfigError(f"--baseline: {path} is a folder; give the results.json of an earlier compare --out")
    try:
        document = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"--baseline: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--baseline: {path} is not UTF-8 text; give the results.json of an earlier compare --out") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--baseline: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ConfigError(f"--baseline: {path} is nested too deeply to be a dpmcli results.json") from None
    runs = document.get("runs") if isinstance(document, dict) else None
    number = lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict) or not isinstance(runs, list) or not runs or not all(
        isinstance(r, dict) and isinstance(r.get("run"), str) and number(r.get("error")) for r in runs
    ):
        raise ConfigError(
            f"--baseline: {path} is not a dpmcli compare results.json (a 'config' object and a non-empty 'runs' list of runs with errors)"
        )
    return document


def run_compare(*, solver, sweep_values, model, batch, seed, device, dtype, reference_steps, bandwidth, cache_dir, no_cache,
                max_error, baseline, tolerance, min_order, fmt, out, plot, dpi, quiet, conditioning=None, guidance=None) -> int:
    from ..compare import Sweep, check_gates, prepare_sweep, run_sweep
    from ..reference import default_cache_dir
    from .console import progress_bar, show_progress, warn
    from .plotting import check_dpi, check_figure_path, print_written

    check_format(fmt, FORMATS)
    converters = {"order": int, "steps": int}
    values = {name: split_list(f"--{name.replace('_', '-')}", raw, converters.get(name, str)) for name, raw in sweep_values.items()}
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance: {tolerance} is not allowed; it must be a number >= 0")
    if max_error is not None and not (math.isfinite(max_error) and max_error > 0):
        raise ConfigError(f"--max-error: {max_error} is not allowed; it must be a positive number")
    if min_order is not None and not math.isfinite(min_order):
        raise ConfigError(f"--min-order: {min_order} is not allowed; it must be a number")
    baseline_doc = _load_baseline(baseline) if baseline is not None else None
    check_figure_path("--plot", plot)
    outputs = OutputFiles({"--plot": plot}, folders={"--out": out})
    check_dpi(dpi)
    scales = split_list("--guidance-scale", guidance, float) or [None]
    sweep = Sweep(
        base=solver(), values=values, model=model, batch=batch, seed=seed, device=device, dtype=dtype,
        reference_steps=reference_steps, bandwidth=bandwidth,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        conditioning=dict(conditioning or {}), guidance=scales, explicit=solver.explicit,
    )
    prepared = prepare_sweep(sweep)  # usage errors (nothing valid) surface before any work
    warn(prepared.notes, quiet)
    runs = len(prepared.planned) * len(scales)
    with progress_bar(runs, f"compare: ground truth, then {runs} runs", show_progress(quiet)) as advance:
        report = run_sweep(prepared, on_run=lambda label: advance(f"compare: done {label}"))
    warn(report.warnings, quiet)  # a damaged or unwritable reference cache
    invalid = [s for s in report.skipped if not s["reason"].startswith("identical to")]
    merged = len(report.skipped) - len(invalid)
    warn([f"skipped {s['run']}: {s['reason']}" for s in invalid], quiet)
    if merged:
        warn([f"{merged} combination(s) give the same update as another run and were not run twice (listed under 'skipped')"], quiet)
    failures, notes = check_gates(report, max_error, baseline_doc, tolerance, min_order)
    if baseline_doc is not None:
        before, now = baseline_doc.get("config", {}), document_config(report)
        differ = [k for k in ("model", "batch", "seed", "dtype") if k in before and before[k] != now[k]]
        if differ:
            notes.insert(0, "the baseline was made with other inputs: " + ", ".join(f"{k} {before[k]!r} (now {now[k]!r})" for k in differ))
    document = report.document()
    document["gates"] = {
        "max_error": max_error, "baseline": None if baseline is None else str(baseline), "tolerance": tolerance,
        "min_order": min_order, "failures": failures, "notes": notes, "passed": not failures,
    }
    with outputs:
        if out is not None:
            outputs.make_folder(out)
            write_out_dir(report, document, out, dpi)
        if plot is not None:
            from ..plots import error_figure, save_figure

            save_figure(error_figure(report.runs, _title(report)), plot, dpi)
    emit(report, document, fmt)
    print_written(outputs.written, quiet)
    warn(notes, quiet)
    nan_runs = [r["run"] for r in report.runs if r["status"] != "ok"]
    if nan_runs:
        print(f"dpmcli: error: numerical failure (NaN/Inf) in {len(nan_runs)} run(s): {'; '.join(nan_runs)}", file=sys.stderr)
        return EXIT_NUMERICAL
    if failures:
        print(f"dpmcli: gate failed: {len(failures)} failure(s)", file=sys.stderr)
        for failure in failures:
            print(f"  FAIL {failure}", file=sys.stderr)
        return EXIT_GATE_FAILED
    return 0


def csv_columns(report) -> list[str]:
    """The fixed columns, then guidance and the model's quality numbers when a network ran."""
    extra = (["guidance_scale"] if any("guidance_scale" in r for r in report.runs) else []) + list(report.quality_columns)
    return CSV_COLUMNS[:-2] + extra + CSV_COLUMNS[-2:]


def document_config(report) -> dict:
    return report.sweep.to_dict()


def _title(report) -> str:
    sweep = report.sweep
    return f"{sweep.model}, {sweep.batch} samples, seed {sweep.seed}: error against NFE"


def emit(report, document: dict, fmt: str) -> None:
    from ..report import csv_text, dumps_json

    if fmt == "json":
        sys.stdout.write(dumps_json(document))
    elif fmt == "csv":
        sys.stdout.write(csv_text(report.runs, csv_columns(report)))
    elif fmt == "markdown":
        sys.stdout.write(markdown_summary(report, document))
    else:
        from .console import stdout_console
        from .render import compare_tables

        console = stdout_console()
        for renderable in compare_tables(report, document):
            console.print(renderable)


def write_out_dir(report, document: dict, out: Path, dpi: int) -> None:
    from ..plots import compare_samples_figure, error_figure, save_figure
    from ..report import atomic_write, csv_text, dumps_json

    out.mkdir(exist_ok=True)
    files = {
        "results.json": dumps_json(document),
        "results.csv": csv_text(report.runs, csv_columns(report)),
        "summary.md": markdown_summary(report, document),
        "config.json": dumps_json(document["config"]),
    }
    for name, text in files.items():
        atomic_write(out / name, lambda handle, text=text: handle.write(text.encode()))
    save_figure(error_figure(report.runs, _title(report)), out / "error_vs_nfe.png", dpi)
    if report.mixture is None and report.model is not None and report.model.has_images:
        write_image_panels(report, out / "samples.png", dpi)
    elif report.mixture is not None and report.mixture.dims == 2:
        panels = sample_panels(report)
        if panels:
            save_figure(compare_samples_figure(report.mixture, panels, f"{report.sweep.model}: final samples per solver"), out / "samples.png", dpi)


def write_image_panels(report, path: Path, dpi: int, per_run: int = 10) -> None:
    """Image models: one row per solver at the shared step count, the first ``per_run`` samples each."""
    import torch

    from ..images import image_grid
    from ..plots import image_rows_figure, save_figure

    chosen = _panel_rows(report)
    if not chosen:
        return
    rows = []
    for row in chosen:
        images = report.model.to_images(torch.from_numpy(report.samples[row["run"]][:per_run]))
        label = f"{row['solver']}\nerror {row['error']:.3g}" if row.get("error") is not None else row["solver"]
        rows.append((label, image_grid(images, columns=per_run)))
    title = f"{report.sweep.model}: the first {per_run} samples of each solver at {chosen[0]['steps']} steps (shared x_T)"
    save_figure(image_rows_figure(rows, title), path, dpi)


def _panel_rows(report) -> list:
    steps = sorted({r["steps"] for r in report.runs if r["status"] == "ok"})
    if not steps:
        return []
    chosen = steps[1] if len(steps) > 1 else steps[0]
    rows = [r for r in report.runs if r["steps"] == chosen and r["status"] == "ok"]
    return sorted(rows, key=lambda r: (r["kind"], r["solver"]))[:16]


def sample_panels(report) -> list:
    """One panel per solver at a shared step count: the second-smallest of the sweep (or the only one)."""
    steps = sorted({r["steps"] for r in report.runs if r["status"] == "ok"})
    if not steps:
        return []
    chosen = steps[1] if len(steps) > 1 else steps[0]
    panels = []
    for row in sorted(report.runs, key=lambda r: (r["kind"], r["solver"])):
        if row["steps"] != chosen or row["status"] != "ok":
            continue
        caption = f"{chosen} steps, " + (
            f"L2 error {row['error']:.3g}, flips {row['mode_flips']:.1%}" if row["kind"] == "ode" else f"MMD² {row['mmd2']:.2e}"
        )
        panels.append((row["solver"], report.samples[row["run"]], caption))
    return panels[:16]


def _md_number(value) -> str:
    from .render import DASH, compare_cell

    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    if value is None or isinstance(value, (int, float)):
        return compare_cell(value)
    return str(value) if str(value) else DASH


def markdown_summary(report, document: dict) -> str:
    from .render import DASH, guidance_blocks

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
    quality = report.quality_columns
    middle = (
        {"mode_flips": "mode flips", "strong_error": "strong error", "log_likelihood_gap": "log-lik gap"}
        if report.mixture is not None else quality
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
        for r in block:
            cells = " | ".join(_md_number(r.get(key)) for key in middle)
            steps = "auto" if r.get("method") == "adaptive" else _md_number(r.get("steps"))
            lines.append(
                f"| {_md_number(r.get('best_at_nfe'))} | {r['solver']} | {steps} | {_md_number(r.get('nfe'))} | "
                f"{_md_number(r.get('error'))} | {r['status'] if r['status'] != 'ok' else r.get('error_metric', DASH)} | {cells} | "
                f"{_md_number(r.get('seconds'))} |"
            )
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
