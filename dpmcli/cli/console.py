"""Terminal plumbing: consoles built per invocation, one-line errors, progress only on a terminal."""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console

from ..errors import EXIT_INTERNAL, DpmcliError


def stdout_console() -> Console:
    # Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room.
    width = None if sys.stdout.isatty() else 200
    return Console(file=sys.stdout, width=width, highlight=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty() and not os.environ.get("CI")


def warn(messages, quiet: bool = False) -> None:
    if quiet:
        return
    console = stderr_console()
    for message in messages:
        console.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def handle_errors(command):
    """Turn library errors into one line on stderr and the documented exit code; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except DpmcliError as exc:
            _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error_line("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # an internal error: still one line, exit code 4
            if os.environ.get("DPMCLI_DEBUG"):
                raise
            _error_line(f"internal error: {type(exc).__name__}: {exc} (set DPMCLI_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _error_line(message: str) -> None:
    print(f"dpmcli: error: {' '.join(message.split())}", file=sys.stderr)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool):
    """Yields an ``advance()`` function; draws a rich bar on stderr only when enabled."""
    if not enabled:
        yield lambda *_: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda *_: progress.advance(task)
