"""The command lines: a user error is one line naming the command and the problem, not a traceback."""

from __future__ import annotations

import sys

import pytest

from radio_vlm.cli import TRACEBACK_ENV, main


@pytest.fixture
def unwritable(tmp_path) -> str:
    blocker = tmp_path / "file"
    blocker.write_text("")
    return str(blocker / "sub")  # a folder inside a file: mkdir fails


def _argv(out: str) -> list[str]:
    return ["demo-data", "--out", out, "--num-train", "1", "--num-test", "1"]


def test_user_error_is_one_line_on_the_command_line(unwritable, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["radio-vlm", *_argv(unwritable)])
    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith("radio-vlm demo-data: error: ") and err.count("\n") == 1
    assert unwritable.rsplit("/", 1)[0] in err  # names the path that could not be written

    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(OSError):
        main()


def test_errors_propagate_when_called_from_python(unwritable):
    with pytest.raises(OSError):
        main(_argv(unwritable))
