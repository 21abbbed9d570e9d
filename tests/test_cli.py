"""User mistakes get a one-line error and exit code 2, never a traceback; --help explains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def run(module: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("module,sub", [("edge_agent", "run"), ("edge_agent", "doctor"), ("cloud_selector", "serve"),
                                        ("cloud_selector", "select"), ("cloud_selector", "labels"),
                                        ("cloud_selector", "train")])
def test_help_explains(module, sub):
    top, one = run(module, "--help"), run(module, sub, "--help")
    assert top.returncode == 0 and one.returncode == 0
    assert sub in top.stdout and len(one.stdout) > 200


def write_config(tmp_path, extra: str = "", bundle: str = "/nonexistent/bundle", address: str = "127.0.0.1:1"):
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nid = "cam"\nstate_dir = "{tmp_path / "state"}"\n[source]\npath = "{tmp_path}"\n'
                    f'[model]\nbundle_dir = "{bundle}"\n[cloud]\naddress = "{address}"\n{extra}')
    return path


def test_wrong_config_key(tmp_path):
    config = write_config(tmp_path, extra="[policy]\nthreshhold = 0.3\n")
    assert_one_line_error(run("edge_agent", "run", "--config", str(config)), "unknown key policy.threshhold")


def test_wrong_value_type_from_env(tmp_path):
    import os

    env = {**os.environ, "EDGE_AGENT_POLICY_THRESHOLD": "high"}
    assert_one_line_error(run("edge_agent", "run", "--config", str(write_config(tmp_path)), env=env),
                          "EDGE_AGENT_POLICY_THRESHOLD")


def test_missing_model_file(tmp_path):
    assert_one_line_error(run("edge_agent", "run", "--config", str(write_config(tmp_path))), "manifest.json")


def test_missing_config_file(tmp_path):
    assert_one_line_error(run("edge_agent", "run", "--config", str(tmp_path / "nope.toml")), "not found")


def test_doctor_says_what_is_wrong_in_plain_words(cloud, fashion_train, tmp_path):
    from conftest import seed_model

    services, _ = cloud
    bundle = seed_model(services, fashion_train, tmp_path / "seed", per_class=2)
    result = run("edge_agent", "doctor", "--config", str(write_config(tmp_path, bundle=str(bundle))))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = {line.split()[1].rstrip(":"): line for line in result.stdout.splitlines() if line.strip()}
    assert lines["model"].startswith("ok")
    assert lines["server"].startswith("FAIL") and "127.0.0.1:1" in result.stdout
    assert lines["source"].startswith("FAIL")  # the config's source is a directory without videos


def test_cloud_label_file_errors(tmp_path):
    data = str(tmp_path / "cloud")
    bad = tmp_path / "labels.csv"
    bad.write_text("id,label\nx,y\n")
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "labels", "import", str(bad)), "candidate_id,label")
    # A readable file with wrong rows is not a usage error: exit 1, each refused row on its own line.
    bad.write_text("candidate_id,label\n6f1d8c8e-4a43-4f2e-9d8e-2f4f1f0b7a11,cat\n")
    refused = run("cloud_selector", "--data-dir", data, "labels", "import", str(bad))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "refused line 2: unknown candidate id '6f1d8c8e-4a43-4f2e-9d8e-2f4f1f0b7a11'" in refused.stdout.splitlines()
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "labels", "import", str(tmp_path / "gone.json")),
                          "no such file")
    (tmp_path / "labels.xlsx").write_bytes(b"PK")
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "labels", "import", str(tmp_path / "labels.xlsx")),
                          "cannot tell the format", "--format")
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "labels", "requeue", "--older-than-min", "-5"),
                          "--older-than-min must be 0 or more")
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "labels", "history", "nope"), "no candidate 'nope'")
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "select"), "no published model")
    assert_one_line_error(run("cloud_selector", "--data-dir", data, "train", "--quiet"), "no labeled candidates")


def test_cloud_status_on_empty_data_dir(tmp_path):
    result = run("cloud_selector", "--data-dir", str(tmp_path / "cloud"), "status")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"candidates": {}, "latest_model": None, "devices": []}


def test_agent_config_template_matches_deploy_example():
    result = run("edge_agent", "config", "template")
    assert result.returncode == 0
    assert (ROOT / "deploy" / "agent.example.toml").read_text().strip() == result.stdout.strip(), \
        "deploy/agent.example.toml is stale: regenerate it with `edge-agent config template`"


def test_doctor_all_ok_over_tls_with_an_enrolled_device(cloud_factory, fashion_train, tmp_path):
    """The production path end to end: `devices add` issues the token, the agent config points at
    it and at the CA, and every doctor check passes against a TLS server that checks tokens."""
    from cloud_selector.auth import DeviceAuthenticator
    from cloud_selector.server import ServerTls
    from conftest import seed_model, write_video
    from tls_certs import make_ca

    ca = make_ca(tmp_path / "pki")
    server_cert = ca.issue(tmp_path / "pki", "server")
    cloud = cloud_factory(auth=DeviceAuthenticator, tls=ServerTls.from_files(server_cert.cert, server_cert.key))
    added = run("cloud_selector", "--data-dir", str(tmp_path / "cloud"), "devices", "add", "cam-doc")
    assert added.returncode == 0, added.stderr
    token = next(line.split("=", 1)[1].strip().strip('"') for line in added.stdout.splitlines()
                 if line.strip().startswith("token ="))
    (tmp_path / "token").write_text(token + "\n")
    bundle = seed_model(cloud.services, fashion_train, tmp_path / "seed", per_class=2)
    video = write_video(fashion_train, tmp_path / "videos" / "clip.avi", n_items=3)
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "cam-doc"\ntoken_file = "{tmp_path / "token"}"\n'
                      f'state_dir = "{tmp_path / "state"}"\n[source]\npath = "{video.parent}"\n'
                      f'[model]\nbundle_dir = "{bundle}"\ntrusted_keys = ["{tmp_path / "cloud" / "keys" / "signing_key.pub.pem"}"]\n'
                      f'[spool]\ncap_mb = 16.0\n'
                      f'[cloud]\naddress = "{cloud.address}"\ntls_ca_file = "{ca.files.cert}"\n')
    result = run("edge_agent", "doctor", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines() if line.strip()] == ["ok"] * 7

    (tmp_path / "token").write_text("not-the-token\n")
    result = run("edge_agent", "doctor", "--config", str(config))
    assert result.returncode == 1 and "credentials" in result.stdout and "devices add" in result.stdout


def test_readme_documents_every_agent_key():
    result = run("edge_agent", "config", "reference")
    assert result.returncode == 0
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- agent-config:begin -->")[1].split("<!-- agent-config:end -->")[0]
    assert section.strip() == result.stdout.strip(), \
        "README's agent configuration table is stale: paste `edge-agent config reference` between the markers"
