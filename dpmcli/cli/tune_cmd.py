"""``dpmcli tune``: search the grid with a progress bar, show the tuned recipe beside every stock grid, write it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from rich.table import Table

from ..errors import ConfigError
from ..plan import build_plan
from ..reference import default_cache_dir
from ..report import OutputFiles, atomic_write, dumps_json
from ..tune import TuneResult, TuneSpec, tune
from .console import stdout_console, warn
from .options import check_format
from .plotting import print_written
from ..export import compare_cell


def run_tune(*, solver, nfe, model, out, seed, train_seed, batch, train_batch, evaluations, guidance_scale, conditioning,
             device, dtype, reference_steps, cache_dir, no_cache, fmt, quiet, progress, progress_enabled) -> None:
    check_format(fmt, ("table", "json"))
    if out is not None and Path(out).suffix != ".json":
        raise ConfigError(f"--out: {out} must end in .json (a recipe is a JSON file)")
    outputs = OutputFiles({"--out": out})
    spec = TuneSpec(
        base=solver(), nfe=nfe, model=model, explicit=solver.explicit, seed=seed, train_seed=train_seed, batch=batch,
        train_batch=train_batch, guidance_scale=guidance_scale, conditioning=dict(conditioning), device=device, dtype=dtype,
        reference_steps=reference_steps, cache_dir=None if no_cache else (cache_dir or default_cache_dir()), evaluations=evaluations,
    )
    with progress(None, f"tune: {model}, {nfe} model calls", progress_enabled) as advance:
        result = tune(spec, progress=lambda done, total: advance(f"tune: loss evaluations ({done} of at most {total})"))
    warn(result.notes, quiet)
    document = tune_document(result)
    with outputs:
        if out is not None:
            atomic_write(out, lambda handle: handle.write(dumps_json(result.recipe.to_dict()).encode()))
    if fmt == "json":
        sys.stdout.write(dumps_json(document))
    else:
        stdout_console().print(tune_table(result))
    print_written(outputs.written, quiet)


def tune_document(result: TuneResult) -> dict:
    return {
        "recipe": result.recipe.to_dict(),
        "tuned": result.tuned.to_dict(),
        "default": result.default.to_dict(),
        "stock": [s.to_dict() for s in result.stock],
        "metric": result.metric,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
        "notes": result.notes,
    }


def _ratio(value, best) -> str:
    if value is None or best is None or not (math.isfinite(value) and math.isfinite(best)) or best == 0:
        return "—"
    return f"{value / best:.2f}x"


def tune_table(result: TuneResult) -> Table:
    recipe, tuned = result.recipe, result.tuned
    plan = build_plan(recipe.config)
    quality = sorted({k for s in [tuned, *result.stock] for k in s.quality})
    held = recipe.held_out
    table = Table(
        title=f"tune: {recipe.model}, {plan.config.algo} order {plan.config.order}, {recipe.nfe} model calls "
        f"({result.metric}; training seed {recipe.training['seed']}, held-out seed {held['seed']}, {held['batch']} samples)",
        caption=f"{result.evaluations} loss evaluations in {result.seconds:.1f} s; tuned / row is how many times smaller the "
        "tuned grid's held-out error is",
        header_style="bold",
    )
    for name in ("grid", f"train loss ({recipe.training['loss']})", f"held-out error ({result.metric})", "tuned / row", *quality):
        table.add_column(name, justify="left" if name == "grid" else "right")
    rows = [(tuned.label, tuned)] + [(f"{s.label}{' (default)' if s is result.default else ''}", s) for s in result.stock]
    if result.default not in result.stock:
        rows.append((f"{result.default.label} (default)", result.default))
    for name, scored in rows:
        style = "bold green" if scored is tuned else ""
        table.add_row(
            f"[{style}]{name}[/{style}]" if style else name, compare_cell(scored.train_error), compare_cell(scored.held_out_error),
            "—" if scored is tuned else _ratio(scored.held_out_error, tuned.held_out_error),
            *[compare_cell(scored.quality.get(k)) for k in quality],
        )
    return table
