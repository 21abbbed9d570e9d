"""`cloud-selector users ...` and `cloud-selector serve --dashboard-address`, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT


def cli(data_dir: Path, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud_selector", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, input=stdin, env=env)


def password_file(tmp_path: Path, password: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"pw-{password}"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def run_main(capsys, data_dir: Path, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (a subprocess costs seconds of imports); (exit code, stdout, stderr)."""
    from cloud_selector.cli import main

    code = main(["--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_users_add_list_set_role_disable_set_password(tmp_path, capsys):
    from cloud_selector.cli import open_services
    from cloud_selector.users import UserStore

    data = tmp_path / "cloud"
    code, out, err = run_main(capsys, data, "users", "add", "ana", "--role", "labeler", "--password-file",
                              str(password_file(tmp_path, "first-password")))
    assert code == 0 and "added ana (labeler)" in out, err
    assert run_main(capsys, data, "users", "set-role", "ana", "admin")[1].strip() == "ana is now admin"
    code, out, _ = run_main(capsys, data, "users", "set-password", "ana", "--password-file",
                            str(password_file(tmp_path, "second-pass")))
    assert code == 0 and "open sessions have ended" in out
    services = open_services(data)
    store = UserStore(services.catalog)
    assert store.authenticate("ana", "first-password") is None
    assert store.authenticate("ana", "second-pass").role == "admin"
    assert run_main(capsys, data, "users", "disable", "ana")[0] == 0
    assert store.authenticate("ana", "second-pass") is None
    services.catalog.close()
    # And once as a user runs it.
    lines = cli(data, "users", "list").stdout.splitlines()
    assert lines[0] == "name\trole\tcreated\tdisabled"
    name, role, created, disabled = lines[1].split("\t")
    assert (name, role) == ("ana", "admin") and re.fullmatch(r"\d{4}-.*Z", created) and disabled != "-"


def test_users_refuse_what_they_cannot_use(tmp_path, capsys, monkeypatch):
    data = tmp_path / "cloud"

    def refused(*args: str) -> str:
        code, _, err = run_main(capsys, data, *args)
        assert code == 2 and err.startswith("cloud-selector: error: ") and err.count("\n") == 1, err
        return err

    assert "chmod 600" in refused("users", "add", "ana", "--role", "admin", "--password-file",
                                  str(password_file(tmp_path, "readable-by-all", 0o644)))
    assert "at least 10 characters" in refused("users", "add", "ana", "--role", "admin", "--password-file",
                                               str(password_file(tmp_path, "short")))
    assert "user name" in refused("users", "add", "bad name", "--role", "admin", "--password-file",
                                  str(password_file(tmp_path, "long-enough-1")))
    good = str(password_file(tmp_path, "long-enough-2"))
    assert run_main(capsys, data, "users", "add", "ana", "--role", "admin", "--password-file", good)[0] == 0
    assert "already exists" in refused("users", "add", "ana", "--role", "admin", "--password-file", good)
    assert "no user 'nobody'" in refused("users", "disable", "nobody")
    # Without a file it asks twice, without echo.
    answers = iter(["typed-password", "typed-password", "typed-password", "other-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run_main(capsys, data, "users", "add", "bo", "--role", "reviewer")[0] == 0
    assert "the two passwords differ" in refused("users", "add", "cy", "--role", "reviewer")
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, data, "users", "set-role", "ana", "boss")
    assert exit_info.value.code == 2 and "invalid choice: 'boss'" in capsys.readouterr().err


def start_serve(data: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "cloud_selector", "--data-dir", str(data), "serve",
                                "--grpc-address", "127.0.0.1:0", "--dashboard-address", "127.0.0.1:0", *extra],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "CLOUD_SELECTOR_DASHBOARD_SECRET": ""})
    seen = []
    for line in process.stdout:
        seen.append(line)
        match = re.search(r"dashboard on (http://127\.0\.0\.1:\d+)/", line)
        if match:
            return process, match.group(1)
    process.wait(10)
    raise AssertionError(f"serve never printed the dashboard URL: {''.join(seen)} {process.stderr.read()}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0, process.stderr.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_serve_starts_the_dashboard_with_a_private_secret(tmp_path):
    data = tmp_path / "cloud"
    process, url = start_serve(data)
    try:
        assert json.load(urllib.request.urlopen(url + "/healthz", timeout=10)) == {"status": "ok"}
        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(url + "/models", timeout=10)
            raise AssertionError("the models page answered without a login")
        except urllib.error.HTTPError as exc:
            assert exc.code == 303 and exc.headers["location"] == "/login?next=%2Fmodels"
        login_page = urllib.request.urlopen(url + "/login", timeout=10)
        assert "__Host-efw_session=" in login_page.headers["set-cookie"]
    finally:
        stop(process)
    secret = data / "keys" / "dashboard_secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 32
    secret.chmod(0o644)
    one_line_error(cli(data, "serve", "--grpc-address", "127.0.0.1:0", "--dashboard-address", "127.0.0.1:0"),
                   "readable by group or others", f"chmod 600 {secret}")


def test_serve_refuses_a_bad_dashboard_address_or_secret(tmp_path):
    data = tmp_path / "cloud"
    one_line_error(cli(data, "serve", "--dashboard-address", "localhost"), "--dashboard-address must be HOST:PORT")
    env = {**os.environ, "CLOUD_SELECTOR_DASHBOARD_SECRET": "too-short"}
    one_line_error(cli(data, "serve", "--grpc-address", "127.0.0.1:0", "--dashboard-address", "127.0.0.1:0", env=env),
                   "CLOUD_SELECTOR_DASHBOARD_SECRET must be at least 32 characters")
