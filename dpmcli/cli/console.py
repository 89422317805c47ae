"""Terminal plumbing: consoles built per invocation, one-line errors, progress only on a terminal."""

from __future__ import annotations

import contextvars
import functools
import os
import re
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

import typer
from rich.console import Console
from typer.core import TyperGroup

from ..distributed import launched
from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, DpmcliError


def stdout_console() -> Console:
    # Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room.
    width = None if sys.stdout.isatty() else 200
    return Console(file=sys.stdout, width=width, highlight=False)


def stderr_console() -> Console:
    # off a terminal a message stays one line, however long (CI logs are read line by line)
    width = None if sys.stderr.isatty() else 100_000
    return Console(file=sys.stderr, width=width, highlight=False)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty() and not os.environ.get("CI")


def warn(messages, quiet: bool = False) -> None:
    if quiet:
        return
    console = stderr_console()
    for message in messages:
        console.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so staged outputs are discarded, then exit 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_errors(command):
    """Turn library errors into one line on stderr and the documented exit code; never a traceback.

    Python warnings raised while the command runs are held back: after an error only the error
    line is printed, after success each distinct warning is printed as one ``warning:`` line.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                result = command(*args, **kwargs)
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except DpmcliError as exc:
                _error_line(str(exc))
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                _error_line("interrupted")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Terminated:
                _error_line("terminated")
                raise typer.Exit(EXIT_TERMINATED) from None
            except Exception as exc:
                if _out_of_memory(exc):
                    hint = "; use a smaller --batch" if "batch" in kwargs else ""
                    _error_line(f"out of memory: {_first_line(exc)}{hint}")
                    raise typer.Exit(EXIT_USAGE) from None
                if os.environ.get("DPMCLI_DEBUG"):
                    raise
                # an internal error: still one line, exit code 4
                _error_line(f"internal error: {type(exc).__name__}: {exc} (set DPMCLI_DEBUG=1 for the traceback)")
                raise typer.Exit(EXIT_INTERNAL) from None
        # under torchrun rank 0 alone shows warnings, as it alone prints the results
        warn(_distinct_warnings(caught), kwargs.get("quiet", False) or _rank() not in (None, "0"))
        return result

    return wrapper


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _distinct_warnings(caught) -> list[str]:
    seen: dict[str, None] = {}
    for record in caught:
        seen.setdefault(" ".join(str(record.message).split()), None)
    return list(seen)


def _rank() -> str | None:
    """This process's rank under torchrun (RANK), None in a single process."""
    return os.environ.get("RANK") if launched() else None


def _error_line(message: str) -> None:
    # under torchrun every rank may fail alone: the line names the rank (unless the message does)
    rank = _rank()
    where = f"rank {rank}: " if rank is not None and not message.startswith("rank ") else ""
    print(f"dpmcli: error: {where}{' '.join(message.split())}", file=sys.stderr)


# ------------------------------------------------------------------ the parser's errors

# click (vendored by recent Typer) exposes its UsageError only through its subclasses
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false"}


def _typed_value(args: list[str], opts) -> str | None:
    """The text the user gave to one of ``opts`` (the last occurrence wins, as in the parser)."""
    value = None
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(opt + "="):
                value = arg[len(opt) + 1 :]
    return value


def usage_message(exc, args: list[str], command: str = "dpmcli") -> str:
    """One line for a parser error: the option, the value, and what is allowed.

    ``command`` names the command when the error carries no context of its own.
    """
    where = exc.ctx.command_path if exc.ctx is not None else command
    see = f"see '{where} --help'"
    kind = type(exc).__name__
    param = getattr(exc, "param", None)
    if kind == "NoSuchOption":
        options = ", ".join(sorted(getattr(exc, "possibilities", None) or ()))
        return f"{exc.option_name}: no such option of '{where}'" + (f"; did you mean {options}?" if options else f"; {see}")
    if kind == "BadParameter" and param is not None and getattr(param, "opts", None):
        name = max(param.opts, key=len)
        value = _typed_value(args, param.opts)
        words = str(exc.message)
        wanted = next((phrase for key, phrase in _TYPE_WORDS.items() if f"valid {key}" in words), None)
        allowed = f"it must be {wanted}" if wanted else words
        return f"{name}: {value!r}: {allowed}" if value is not None else f"{name}: {allowed}"
    if kind == "MissingParameter" and param is not None:
        name = max(getattr(param, "opts", None) or [param.name], key=len)
        return f"{name.upper() if not name.startswith('-') else name}: missing; {see}"
    if kind == "BadOptionUsage":
        option = getattr(exc, "option_name", None) or "option"
        if "requires an argument" in exc.format_message():
            return f"{option}: needs a value; {see}"
        if "does not take a value" in exc.format_message():
            return f"{option}: is a switch and takes no value; {see}"
    text = exc.format_message().strip()
    extra = re.match(r"Got unexpected extra argument\S* \((.*)\)$", text)
    if extra:
        return f"unexpected argument(s) {extra.group(1)!r}: '{where}' takes no more; {see}"
    command = re.match(r"No such command '(.*)'\.(.*)$", text)
    if command:
        hint = command.group(2).strip()
        return f"{command.group(1)!r}: no such command" + (f"; {hint[0].lower()}{hint[1:]}" if hint else f"; {see}")
    return f"{text.rstrip('.')}; {see}"


_INVOCATION: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("dpmcli_invocation", default=None)


def invocation() -> tuple[str, ...] | None:
    """The arguments the running command was given after ``dpmcli`` (None outside :class:`DpmcliGroup`)."""
    return _INVOCATION.get()


class DpmcliGroup(TyperGroup):
    """The command group: parser errors become dpmcli's one-line errors (exit 2), SIGTERM exits 143."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        token = _INVOCATION.set(tuple(args))
        try:
            code = super().main(args=args, prog_name=prog_name or "dpmcli", complete_var=complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
                print(exc.ctx.get_help())
            else:
                command = f"dpmcli {args[0]}" if args and args[0] in self.commands else "dpmcli"
                _error_line(usage_message(exc, args, command))
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            _error_line("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except Terminated:
            _error_line("terminated")
            sys.exit(EXIT_TERMINATED)
        finally:
            _INVOCATION.reset(token)
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool):
    """Yields ``advance(label=None)``, which counts one unit done and may relabel the bar; a rich
    bar on stderr only when enabled."""
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

        def advance(label=None, *_):
            progress.update(task, advance=1, **({"description": label} if isinstance(label, str) else {}))

        yield advance
