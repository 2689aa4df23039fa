"""``atelier console``: Streamlit runs the console's script headless, on the given port, pointed at --url."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from atelier.cli import app
from atelier.cli import console as cli_console
from atelier.cli.console import streamlit_command
from atelier.console import APP_PATH


def test_streamlit_command_runs_the_app_headless_without_telemetry():
    cmd = streamlit_command("0.0.0.0", 8765, "http://api:9000")
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_PATH)] and APP_PATH.is_file()
    options = dict(zip(cmd[5:-3:2], cmd[6:-3:2]))
    assert options["--server.headless"] == "true" and options["--server.port"] == "8765"
    assert options["--server.address"] == "0.0.0.0" and options["--browser.gatherUsageStats"] == "false"
    assert options["--server.fileWatcherType"] == "none"
    assert cmd[-3:] == ["--", "--url", "http://api:9000"]
    assert "--" not in streamlit_command("127.0.0.1", 8501)


def test_console_command_execs_streamlit_with_the_url_and_port(monkeypatch):
    ran = []
    monkeypatch.setattr(cli_console.os, "execv", lambda path, argv: ran.append((path, argv)))
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:9000", "console", "--port", "8600"])
    assert result.exit_code == 0, result.output
    [(path, argv)] = ran
    assert path == sys.executable and argv == streamlit_command("127.0.0.1", 8600, "http://127.0.0.1:9000")
    assert "http://127.0.0.1:8600" in result.output


def test_console_command_refuses_a_bad_port():
    result = CliRunner().invoke(app, ["console", "--port", "0"])
    assert result.exit_code == 2
