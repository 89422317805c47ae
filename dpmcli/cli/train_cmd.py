"""``dpmcli train``: check the options, train with a progress bar per stage, render the measurements."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from .. import training
from ..errors import ConfigError
from ..models.digits import VARIANTS, model_files
from ..report import dumps_json
from .console import stdout_console

TARGETS = ("digits",)
STAGES = {"classifier": "classifier (epochs)", "denoiser": "denoiser (iterations)", "evaluation": "evaluation (runs)"}


class _StageBars:
    """A progress callback with one bar per stage on a terminal; elsewhere (CI logs, pipes) a line
    on stderr at every tenth of a stage, so that minutes of training are never silent."""

    def __init__(self, progress_bar, enabled: bool, lines: bool = False):
        self.progress_bar = progress_bar
        self.enabled = enabled
        self.lines = lines and not enabled
        self.stack = contextlib.ExitStack()
        self.stage = None
        self.advance = None

    def __call__(self, stage: str, done: int, total) -> None:
        if stage != self.stage:
            self.stack.close()
            self.stack = contextlib.ExitStack()
            self.stage = stage
            self.advance = self.stack.enter_context(self.progress_bar(total, STAGES.get(stage, stage), self.enabled))
        self.advance()
        if self.lines and total and (done == 1 or done == total or done % max(1, total // 10) == 0):
            print(f"{STAGES.get(stage, stage)}: {done}/{total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.stack.close()


def check_options(target: str, out: Path, threads: int) -> None:
    """What only the command line decides; train_digits checks the training options themselves."""
    if target not in TARGETS:
        raise ConfigError(f"TARGET: {target!r} is not allowed; choose one of: {', '.join(TARGETS)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; give a folder (it is created if missing)")
    if threads < 1:
        raise ConfigError(f"--threads: {threads} is not allowed; it must be a positive integer")


def run_train(*, target, out, process="vp", seed, iterations, minutes, threads, fmt, quiet, progress, progress_enabled) -> None:
    check_options(target, out, threads)
    bars = _StageBars(progress, progress_enabled, lines=not quiet)
    try:
        document = training.train_digits(
            out, process=process, seed=seed, iterations=iterations, minutes=minutes, threads=threads, progress=bars
        )
    finally:
        bars.close()
    if not quiet:
        print(f"wrote {out}/: {', '.join(model_files(process))}", file=sys.stderr)
        print(f"use it with: dpmcli sample --model {VARIANTS[process]}:{out}", file=sys.stderr)
    if fmt == "json":
        sys.stdout.write(dumps_json(document))
    else:
        stdout_console().print(quality_table(document))


def quality_table(document: dict):
    """The measured quality of a trained digits model, one row per sampling setup and one for real digits."""
    from rich.table import Table

    setup = document["quality"]["setup"]
    training = document["training"]
    title = (
        f"{document.get('model', 'digits')}: {training['iterations']} iterations in {training['seconds']:.0f} s, seed {training['seed']}; "
        f"{setup['algo']} order {setup['order']}, {setup['steps']} steps, {setup['batch']} samples"
    )
    table = Table(title=title, title_justify="left", min_width=len(title))
    for column in ("samples", "class accuracy", "classifier confidence", "NN distance"):
        table.add_column(column, justify="right" if column != "samples" else "left")

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    for key, run in document["quality"]["runs"].items():
        table.add_row(key.replace("_", " "), cell(run["class_accuracy"]), cell(run["classifier_confidence"]), cell(run["nn_distance"]))
    real = document["real"]
    table.add_row("real held-out digits", cell(real["class_accuracy"]), cell(real["classifier_confidence"]), cell(real["nn_distance"]))
    return table
