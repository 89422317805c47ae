"""compare's CI gates: --max-error, --baseline (with --tolerance) and --min-order, on a finished sweep's report."""

from __future__ import annotations

import math

from .compare import NOISE_DEFAULTS, SWEEP_FIELDS, SweepReport

# rows that are not a combination of the sweep's options carry their name in one of these keys
EXTRA_RUNS = ("recipe", "peer")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_gates(report: SweepReport, max_error=None, baseline: dict | None = None, tolerance: float = 0.1, min_order=None) -> tuple[list[str], list[str]]:
    """(failures, notes): each failure names the run and by how much.

    Against a baseline, runs match on their solver options, requested steps and guidance scale;
    baseline runs without a finite error are ignored (one note lists them), and a baseline of
    which no run matches a run of this sweep fails: it guards nothing.
    """
    failures: list[str] = []
    notes: list[str] = []
    peers = [row for row in report.runs if row.get("peer")]
    if peers and (max_error is not None or min_order is not None):
        notes.append(f"--max-error and --min-order gate dpmcli's runs; the {len(peers)} --peers row(s) are reported, not gated")
    if max_error is not None:
        for row in (r for r in report.runs if not r.get("peer")):
            error = row.get("error")
            if not _finite(error):
                failures.append(f"{row['run']}: no error value ({row['status']}) against --max-error {max_error:g}")
            elif error > max_error:
                failures.append(f"{row['run']}: {row['error_metric']} {error:.4g} > --max-error {max_error:g} (x{error / max_error:.2f})")
    if baseline is not None:
        old: dict = {}
        ignored: dict = {}  # baseline runs without a usable error, by key
        for r in baseline.get("runs", []):
            if _finite(r.get("error")):
                old[_baseline_key(r)] = r
            else:
                ignored[_baseline_key(r)] = str(r.get("run", "?"))
        if ignored:
            names = list(ignored.values())
            shown = "; ".join(names[:5]) + (f"; ... ({len(names) - 5} more)" if len(names) > 5 else "")
            notes.append(f"baseline: {len(ignored)} run(s) without a finite error are ignored: {shown}")
        new = {_baseline_key(r): r for r in report.runs}
        matched = 0
        for key, row in new.items():
            if key not in old:
                if key not in ignored:  # (those are in the note above)
                    notes.append(f"{row['run']}: not in the baseline")
                continue
            matched += 1
            before, after = old[key]["error"], row.get("error")
            if not _finite(after):
                failures.append(f"{row['run']}: no error value ({row['status']}), baseline {before:.4g}")
            elif after - before > tolerance * abs(before) + 1e-15:
                # relative to |baseline|: MMD^2 is unbiased and may be negative
                worse = (after - before) / abs(before) if before != 0 else math.inf
                failures.append(
                    f"{row['run']}: {row['error_metric']} {after:.4g} vs baseline {before:.4g} "
                    f"({worse:+.1%} of the baseline's size, tolerance {tolerance:.0%})"
                )
        for key, row in old.items():
            if key not in new:
                notes.append(f"{row.get('run', key)}: in the baseline but not in this sweep")
        if not matched:
            failures.append(
                f"--baseline: no run of the baseline matches a run of this sweep ({len(old)} baseline run(s) with an "
                f"error, {len(new)} run(s) now; runs match on their solver options, steps and guidance scale)"
            )
    if min_order is not None:
        for entry in (e for e in report.orders if not e.get("peer")):
            fitted = entry["fitted_order"]
            if fitted is None:
                notes.append(f"{entry['solver']}: fewer than two step counts, no fitted order for --min-order")
            elif fitted < min_order:
                failures.append(f"{entry['solver']}: fitted order {fitted:.2f} < --min-order {min_order:g} (short by {min_order - fitted:.2f})")
    return failures, notes


def _baseline_key(row: dict) -> tuple:
    """What makes two runs the same run: the swept values (steps as asked) and the guidance scale."""
    values = {**row, "steps": row.get("steps_requested", row.get("steps"))}
    noise = tuple((f, values[f]) for f in NOISE_DEFAULTS if values.get(f, NOISE_DEFAULTS[f]) != NOISE_DEFAULTS[f])
    extra = tuple((f, values[f]) for f in ("corrector", *EXTRA_RUNS) if values.get(f) not in (None, "none"))  # corrected, a recipe's, a peer's
    return tuple(str(values.get(f)) for f in (*SWEEP_FIELDS, "guidance_scale")) + noise + extra
