"""The ``expertsteer`` app: every command in ``--help`` (in order), the entry point, and the
policy for bad input: one ``error:`` line and exit 1, never a traceback."""

from importlib.metadata import entry_points

import pytest
import typer
from cli_helpers import flat
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.cli.main import user_errors
from expertsteer.deps import MissingDependencyError

COMMANDS = [
    "demo", "eval", "export", "import-gguf", "fit", "generate", "models", "screen", "serve"
]  # fmt: skip


def test_help_lists_every_command_in_order():
    result = CliRunner().invoke(app, ["--help"], prog_name="expertsteer")
    assert result.exit_code == 0, result.output
    text = flat(result)
    assert text.startswith("Usage: expertsteer [OPTIONS] COMMAND [ARGS]...")
    assert "Steer a target LLM with steering vectors built from an expert model." in text
    commands = text[text.index("Commands") :].split()
    assert [c for c in commands if c in COMMANDS] == COMMANDS
    for command in COMMANDS:
        sub = CliRunner().invoke(app, [command, "--help"], prog_name="expertsteer")
        assert sub.exit_code == 0 and f"Usage: expertsteer {command} [OPTIONS]" in flat(sub)


def test_no_arguments_show_the_help():
    result = CliRunner().invoke(app, [], prog_name="expertsteer")
    assert result.exit_code in (0, 2)  # click >= 8.2 exits 2 after no_args_is_help
    assert "Usage: expertsteer [OPTIONS] COMMAND" in result.output
    assert all(command in result.output for command in COMMANDS)


def test_an_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["fitt"], prog_name="expertsteer")
    assert result.exit_code == 2 and "No such command 'fitt'" in flat(result)


def test_the_console_script_is_the_app():
    (entry,) = entry_points(group="console_scripts", name="expertsteer")
    assert entry.value == "expertsteer.cli:app" and entry.load() is app


def policy_app(exc: BaseException) -> typer.Typer:
    """A one-command app whose command raises ``exc`` under the CLI's error policy."""
    demo = typer.Typer()

    @demo.command()
    @user_errors
    def boom() -> None:
        """Raise."""
        raise exc

    return demo


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad [bold]spec[/bold]: use x"),
        FloatingPointError("NaN at layer 1"),
        FileNotFoundError("no such plan folder"),
        MissingDependencyError("pip install 'expertsteer[serve]'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bad_input_is_one_message_and_exit_1(exc):
    result = CliRunner().invoke(policy_app(exc), [])
    assert result.exit_code == 1
    assert result.output == f"error: {exc}\n"  # markup in the message is printed as is
    assert "Traceback" not in result.output


def test_other_errors_are_not_swallowed():
    result = CliRunner().invoke(policy_app(RuntimeError("a bug")), [])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert "error:" not in result.output


def test_the_policy_keeps_the_command_name_and_help():
    def fit_like() -> None:
        """Docstring kept."""

    wrapped = user_errors(fit_like)
    assert wrapped.__name__ == "fit_like" and wrapped.__doc__ == "Docstring kept."
