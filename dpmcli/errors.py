"""Errors that map onto the documented exit codes of the command line."""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_NUMERICAL = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it
EXIT_TERMINATED = 143  # SIGTERM (a CI runner's time-out)


class DpmcliError(Exception):
    """Base class: an error with a one-line message and an exit code."""

    exit_code = EXIT_INTERNAL


class ConfigError(DpmcliError, ValueError):
    """An option, a combination of options or an input file is invalid (exit code 2)."""

    exit_code = EXIT_USAGE


class NumericalError(DpmcliError, ArithmeticError):
    """The run produced NaN or Inf (exit code 3)."""

    exit_code = EXIT_NUMERICAL


def bad_choice(option: str, value: object, allowed) -> ConfigError:
    """The one-line error for a value outside a fixed set."""
    choices = ", ".join(str(a) for a in allowed)
    return ConfigError(f"{option}: {value!r} is not allowed; choose one of: {choices}")


def option_flag(name: str) -> str:
    """The command-line flag of a SolverConfig field: ``beta_start`` -> ``--beta-start``."""
    return "--" + name.replace("_", "-")
