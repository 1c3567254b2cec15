"""Help on every command and option, with defaults, examples and exit codes; completion."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from esper_es.cli.app import cli as app

COMMANDS = sorted(app.commands)


def test_every_command_is_listed_in_the_top_help(cli) -> None:
    r = cli("--help")
    assert r.code == 0
    for name in COMMANDS:
        assert f"  {name} " in r.out, name
    assert "Exit codes:" in r.out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_every_command_examples_and_exit_codes(cli, name: str) -> None:
    command = app.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
            default = param.default
            if not param.is_flag and default is not None and "UNSET" not in repr(default):
                # The default is on screen: shown by click or written in the help.
                assert param.show_default or "[default:" in param.help, (name, param.opts)
    r = cli(name, "--help")
    assert r.code == 0
    assert r.out.startswith(f"Usage: esper-es {name} ")
    assert "Examples:" in r.out
    assert f"esper-es {name}" in r.out.split("Examples:")[1]
    assert "Exit codes:" in r.out or name == "completion"


def test_usage_errors_are_one_line_naming_the_command(cli) -> None:
    r = cli("train", "--bogus")
    assert r.code == 2
    assert r.err.startswith("esper-es: train: No such option '--bogus'.")
    assert r.err.endswith("(usage: esper-es train --help)\n")
    assert r.err.count("\n") == 1
    none = cli()
    assert none.code == 2
    assert "a command is required" in none.err and "train" in none.err


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_for_each_shell(cli, shell: str) -> None:
    r = cli("completion", shell)
    assert r.code == 0
    assert "_ESPER_ES_COMPLETE" in r.out


def test_completion_completes_commands_and_options() -> None:
    env = dict(os.environ, _ESPER_ES_COMPLETE="bash_complete")

    def complete(words: str, cword: int) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-m", "esper_es.cli.main"],
            env={**env, "COMP_WORDS": words, "COMP_CWORD": str(cword)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return [line.split(",", 1)[1] for line in r.stdout.splitlines()]

    assert complete("esper-es hi", 1) == ["history"]
    assert set(complete("esper-es history x.db --fo", 3)) == {"--format", "--follow"}
