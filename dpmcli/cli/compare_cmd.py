"""``dpmcli compare``: parse the sweep, run it with a progress bar, render, write files, apply gates."""

from __future__ import annotations

import functools
import json
import math
import shlex
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..compare import Sweep, prepare_sweep, run_sweep
from ..gates import check_gates
from ..distributed import SINGLE, Ranks, from_environment, launched
from ..errors import EXIT_GATE_FAILED, EXIT_NUMERICAL, ConfigError
from ..export import compare_csv, markdown_summary, save_error_figure, write_compare_folder
from ..recipe import load_recipe
from ..reference import default_cache_dir
from ..report import OutputFiles, dumps_json
from ..runlog import RunLog, check_replaceable, check_resumable, sweep_record
from .console import invocation, progress_bar, show_progress, stdout_console, warn
from .options import check_format, split_list
from .plotting import check_dpi, check_figure_path, print_written
from .render import compare_tables

FORMATS = ("table", "json", "csv", "markdown")


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


def load_recipes(paths: list[str]) -> list:
    """The --recipe files, read and checked; two of one name would give two runs one label."""
    recipes = [load_recipe(path) for path in paths]
    names = [r.name for r in recipes]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise ConfigError(f"--recipe: two recipes are named {twice!r} (the file's name labels its run); give them different names")
    return recipes


@contextmanager
def joined_job(device: str):
    """(ranks, device) for a compare: under torchrun this process joins the job, each rank on its own GPU
    (cuda:LOCAL_RANK, NCCL) or on the CPU (gloo), and leaves it at the end; a single process otherwise."""
    if not launched():
        yield SINGLE, device
        return
    import torch

    cuda = device not in ("cpu", "mps") and torch.cuda.is_available()
    ranks = from_environment("cuda" if cuda else "cpu")
    try:
        # one GPU per rank: --device cuda (or cuda:N, which would put every rank on one GPU) means cuda:LOCAL_RANK
        yield ranks, (f"cuda:{ranks.local_rank}" if cuda and (device == "auto" or device.startswith("cuda")) else device)
        # every rank leaves together: torchrun stops the job when one rank ends with an exit code
        # (a failed gate), which must not cut rank 0 short while it writes --out
        ranks.barrier()
    finally:
        ranks.close()


class SweepLog:
    """The run log of one ``compare --out DIR`` (``runlog.RunLog``), around the whole command.

    ``--resume`` is checked before any work; the log is opened once the sweep is planned. When
    the command ends, the log ends with it: removed after success, the folder put back as it was
    after an error, kept after an interruption (Ctrl-C, SIGTERM), with a line saying how many runs
    are saved and how to resume.
    """

    def __init__(self, out: Path | None, resume: bool, *, writer: bool = True, quiet: bool = False):
        if resume and out is None:
            raise ConfigError("--resume: needs --out DIR, the folder of the interrupted sweep")
        try:
            if resume and writer:  # (rank 0 alone reads and writes the folder)
                check_resumable(out)
            elif out is not None and writer:
                check_replaceable(out)
        except OSError:
            pass  # a path the file system refuses (a name too long): the checks of --out say so next
        self.out, self.resume, self.writer, self.quiet = out, resume, writer, quiet or not writer
        self.log: RunLog | None = None
        self.runs = 0

    def open(self, prepared, runs: int) -> RunLog | None:
        """The log of this sweep (None without --out), started: checked against sweep.json on --resume."""
        if self.out is None or not self.writer:
            return None
        log = RunLog(self.out, sweep_record(prepared), resume=self.resume, writer=self.writer)
        if log.replaced:
            warn([f"--out: {self.out} holds {log.replaced} run(s) of another sweep, which was interrupted; "
                  "starting afresh (--resume continues an interrupted sweep)"], self.quiet)
        self.log, self.runs = log.__enter__(), runs  # (a log that fails to start has put the folder back itself)
        return log

    def __enter__(self) -> "SweepLog":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.log is None:
            return
        self.log.__exit__(kind, error, traceback)
        if kind is not None and issubclass(kind, Exception):
            return
        warn(self.log.warnings, self.quiet)  # damaged records run again, records that could not be written
        if kind is not None and self.writer:  # interrupted
            args = invocation()
            again = shlex.join(["dpmcli", *args, *([] if "--resume" in args else ["--resume"])]) if args else "the same command with --resume"
            print(f"dpmcli: {self.log.saved} of {self.runs} run(s) saved in {self.out}; to finish the sweep: {again}", file=sys.stderr)


def resumable(run):
    """``run(..., log=SweepLog)`` called inside the :class:`SweepLog` of its ``out`` and ``resume``."""

    @functools.wraps(run)
    def wrapper(*, out=None, resume: bool = False, quiet: bool = False, ranks: Ranks = SINGLE, **options) -> int:
        with SweepLog(out, resume, writer=ranks.writer, quiet=quiet) as log:
            return run(out=out, quiet=quiet, ranks=ranks, log=log, **options)

    return wrapper


@resumable
def run_compare(*, solver, sweep_values, model, batch, seed, device, dtype, reference_steps, bandwidth, cache_dir, no_cache,
                max_error, baseline, tolerance, min_order, fmt, out, plot, dpi, quiet, conditioning=None, guidance=None,
                recipes=None, peers=None, ranks: Ranks = SINGLE, log: SweepLog | None = None) -> int:
    check_format(fmt, FORMATS)
    converters = {"order": int, "steps": int, "eta": float, "s_noise": float}
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
    quiet = quiet or not ranks.writer  # under torchrun rank 0 alone prints and writes
    scales = split_list("--guidance-scale", guidance, float) or [None]
    sweep = Sweep(
        base=solver(), values=values, model=model, batch=batch, seed=seed, device=device, dtype=dtype,
        reference_steps=reference_steps, bandwidth=bandwidth,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        conditioning=dict(conditioning or {}), guidance=scales, explicit=solver.explicit,
        recipes=load_recipes(split_list("--recipe", recipes)), peers=peers,
    )
    prepared = prepare_sweep(sweep)  # usage errors (nothing valid) surface before any work
    warn(prepared.notes, quiet)
    runs = len(prepared.planned) * len(scales)
    run_log = log.open(prepared, runs) if log is not None else None  # --out's run records (checked on --resume)
    with progress_bar(runs - (run_log.saved if run_log else 0), f"compare: ground truth, then {runs} runs", show_progress(quiet)) as advance:
        report = run_sweep(prepared, on_run=lambda label: advance(f"compare: done {label}"), ranks=ranks, run_log=run_log)
    warn(report.warnings, quiet)  # a damaged or unwritable reference cache
    invalid = [s for s in report.skipped if not s["reason"].startswith("identical to")]
    merged = len(report.skipped) - len(invalid)
    warn([f"skipped {s['run']}: {s['reason']}" for s in invalid], quiet)
    if merged:
        warn([f"{merged} combination(s) give the same update as another run and were not run twice (listed under 'skipped')"], quiet)
    failures, notes = check_gates(report, max_error, baseline_doc, tolerance, min_order)
    if baseline_doc is not None:
        before, now = baseline_doc.get("config", {}), report.sweep.to_dict()
        differ = [k for k in ("model", "batch", "seed", "dtype") if k in before and before[k] != now[k]]
        if differ:
            notes.insert(0, "the baseline was made with other inputs: " + ", ".join(f"{k} {before[k]!r} (now {now[k]!r})" for k in differ))
    document = report.document()
    document["gates"] = {
        "max_error": max_error, "baseline": None if baseline is None else str(baseline), "tolerance": tolerance,
        "min_order": min_order, "failures": failures, "notes": notes, "passed": not failures,
    }
    with outputs if ranks.writer else nullcontext():
        if out is not None and ranks.writer:
            outputs.make_folder(out)
            write_compare_folder(report, out, document=document, dpi=dpi)
        if plot is not None and ranks.writer:
            save_error_figure(report, plot, dpi)
    if ranks.writer:
        emit(report, document, fmt)
    print_written(outputs.written, quiet)
    warn(notes, quiet)
    nan_runs = [r["run"] for r in report.runs if r["status"] != "ok"]
    if nan_runs:
        if ranks.writer:
            print(f"dpmcli: error: numerical failure (NaN/Inf) in {len(nan_runs)} run(s): {'; '.join(nan_runs)}", file=sys.stderr)
        return EXIT_NUMERICAL
    if failures:
        for line in [f"dpmcli: gate failed: {len(failures)} failure(s)"] + [f"  FAIL {failure}" for failure in failures] if ranks.writer else []:
            print(line, file=sys.stderr)
        return EXIT_GATE_FAILED
    return 0


def emit(report, document: dict, fmt: str) -> None:
    """The report on stdout in the chosen format."""
    if fmt == "json":
        sys.stdout.write(dumps_json(document))
    elif fmt == "csv":
        sys.stdout.write(compare_csv(report))
    elif fmt == "markdown":
        sys.stdout.write(markdown_summary(report, document))
    else:
        console = stdout_console()
        for renderable in compare_tables(report, document):
            console.print(renderable)
