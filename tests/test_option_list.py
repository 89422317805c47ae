"""The option list is written once: SolverConfig's fields (with their help text and panel).

Every field is a command-line option of the commands, or is named (with a reason) in
``options.NOT_OPTIONS``; the typer options are built from the fields.
"""

import dataclasses

from typer.testing import CliRunner

from dpmcli.cli import options
from dpmcli.cli.main import app
from dpmcli.config import SolverConfig
from dpmcli.errors import option_flag

FIELDS = [f.name for f in dataclasses.fields(SolverConfig)]


def test_every_field_is_an_option_or_named_as_not_one():
    shared = [name for name, _ in options.SHARED_OPTIONS]
    assert sorted(shared + list(options.NOT_OPTIONS)) == sorted(FIELDS)
    assert not set(shared) & set(options.NOT_OPTIONS)
    assert shared == [name for name in FIELDS if name in shared]  # in SolverConfig's order
    assert all(reason for reason in options.NOT_OPTIONS.values())


def test_the_options_carry_the_fields_help_and_panel():
    for spec in dataclasses.fields(SolverConfig):
        if spec.name in options.NOT_OPTIONS:
            assert "help" not in spec.metadata
            continue
        annotation = dict(options.SHARED_OPTIONS)[spec.name]
        option = annotation.__metadata__[0]
        assert spec.metadata["help"] and option.help == spec.metadata["help"]
        assert option.rich_help_panel == spec.metadata["panel"]
        assert option.default.split("/")[0] == option_flag(spec.name)  # in an Annotated option, the flag comes first


def test_the_defaults_of_the_command_line_are_solver_configs():
    values = {name: options.option_default(name) for name, _ in options.SHARED_OPTIONS}
    assert options.solver_config(**values) == SolverConfig()
    for name in options.COMMAND_LINE_TYPES:
        assert name in FIELDS


def test_every_option_is_in_the_help_of_schedule_and_sample():
    for command in ("schedule", "sample"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        for name, _ in options.SHARED_OPTIONS:
            assert option_flag(name) in result.stdout, (command, name)
