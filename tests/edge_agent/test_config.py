"""Agent configuration: the documented template, strict keys and types, env overrides."""

from __future__ import annotations

import tomllib

import pytest

from edge_agent.config import AgentConfig, ConfigError, build_config, load_config, template

REQUIRED = {"device": {"id": "cam-01"}, "source": {"path": "/data/videos"}, "model": {"bundle_dir": "/opt/bundle"}}


def write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


MINIMAL = """
[device]
id = "cam-01"
[source]
path = "/data/videos"
[model]
bundle_dir = "/opt/bundle"
"""


# --- template --------------------------------------------------------------------------------


def test_template_parses_and_builds_with_required_keys_filled():
    data = tomllib.loads(template())
    # every section of the config is in the template
    assert set(data) == {"device", "source", "model", "policy", "upload", "cloud", "spool", "metrics", "log"}
    for section, values in REQUIRED.items():
        data[section].update(values)
    config = build_config(data, env={})
    assert isinstance(config, AgentConfig)
    assert config.device.id == "cam-01"
    # the template's values are the defaults
    defaults = AgentConfig()
    assert config.policy == defaults.policy
    assert config.cloud == defaults.cloud
    assert config.model.providers == defaults.model.providers


def test_template_marks_and_documents_every_key():
    text = template()
    data = tomllib.loads(text)
    assert text.count("(required)") == 3
    lines = text.splitlines()
    for section, values in data.items():
        for key in values:
            i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
            assert lines[i - 1].startswith("# "), f"{section}.{key} has no doc line"


def test_template_as_is_misses_required_keys():
    with pytest.raises(ConfigError, match=r"device\.id is required"):
        build_config(tomllib.loads(template()), env={})


# --- loading files ---------------------------------------------------------------------------


def test_load_minimal_file(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert (config.device.id, config.source.path, config.model.bundle_dir) == ("cam-01", "/data/videos", "/opt/bundle")
    assert config.cloud.address == "127.0.0.1:50051"


def test_load_values_of_every_type(tmp_path):
    text = """
[device]
id = "cam-01"
[source]
path = "/data/videos"
follow = true
[model]
bundle_dir = "/opt/bundle"
providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
[policy]
threshold = 1          # an int is accepted for a float key
random_fraction = 0.25
max_per_minute = 5
[cloud]
watch_models = false
"""
    config = load_config(write(tmp_path, text), env={})
    assert config.policy.threshold == 1.0 and type(config.policy.threshold) is float
    assert config.policy.random_fraction == 0.25
    assert config.policy.max_per_minute == 5
    assert config.source.follow is True
    assert config.cloud.watch_models is False
    assert config.model.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_invalid_toml_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(write(tmp_path, "[device\nid = "), env={})


# --- unknown names, wrong types --------------------------------------------------------------


def test_unknown_section_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[polcy\]"):
        load_config(write(tmp_path, MINIMAL + "[polcy]\nthreshold = 0.3\n"), env={})


def test_unknown_key_named(tmp_path):
    text = MINIMAL.replace('id = "cam-01"', 'id = "cam-01"\nstatedir = "/tmp"')
    with pytest.raises(ConfigError, match=r"unknown key device\.statedir") as exc:
        load_config(write(tmp_path, text), env={})
    assert "state_dir" in str(exc.value)  # the message lists the known keys


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("policy", "max_per_minute", "1.5", "expected int"),
        ("policy", "max_per_minute", "true", "expected int"),  # a bool is not an int
        ("policy", "threshold", "true", "expected float"),  # nor a float
        ("policy", "threshold", "[0.5]", "expected float"),
        ("cloud", "address", "50051", "expected str"),
        ("cloud", "watch_models", "1", "expected bool"),
        ("model", "providers", "{ a = 1 }", "expected list"),
        # a string that is not even parseable as the expected type
        ("policy", "threshold", '"high"', "expected float, got str"),
        ("cloud", "watch_models", '"yes"', "expected bool, got str"),
    ],
)
def test_wrong_type_names_the_key(tmp_path, section, key, value, expected):
    text = MINIMAL + f"[{section}]\n{key} = {value}\n" if section not in REQUIRED else MINIMAL.replace(
        f"[{section}]\n", f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: ") as exc:
        load_config(write(tmp_path, text), env={})
    assert expected in str(exc.value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("policy", "threshold", '"0.3"'), ("policy", "max_per_minute", '"7"'), ("model", "providers", '"CPUExecutionProvider"')],
)
def test_quoted_value_of_wrong_type_in_file_is_error(tmp_path, section, key, value):
    text = MINIMAL + f"[{section}]\n{key} = {value}\n" if section not in REQUIRED else MINIMAL.replace(
        f"[{section}]\n", f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        load_config(write(tmp_path, text), env={})


def test_section_that_is_not_a_table():
    with pytest.raises(ConfigError, match=r"\[policy\] must be a table"):
        build_config({**REQUIRED, "policy": 3}, env={})


# --- env overrides ---------------------------------------------------------------------------


def test_env_overrides_win_over_the_file(tmp_path):
    text = MINIMAL + """
[cloud]
address = "10.0.0.1:1"
watch_models = true
max_message_mb = 4.0
[policy]
threshold = 0.9
max_per_minute = 60
"""
    env = {
        "EDGE_AGENT_CLOUD_ADDRESS": "10.0.0.5:50051",
        "EDGE_AGENT_POLICY_THRESHOLD": "0.25",
        "EDGE_AGENT_CLOUD_MAX_MESSAGE_MB": "16",  # an int string for a float key
        "EDGE_AGENT_CLOUD_WATCH_MODELS": "false",
        "EDGE_AGENT_POLICY_MAX_PER_MINUTE": "5",
        "EDGE_AGENT_MODEL_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
        "EDGE_AGENT_UNRELATED": "ignored",
    }
    config = load_config(write(tmp_path, text), env=env)
    assert config.cloud.address == "10.0.0.5:50051"
    assert config.policy.threshold == 0.25
    assert config.cloud.max_message_mb == 16.0 and type(config.cloud.max_message_mb) is float
    assert config.cloud.watch_models is False
    assert config.policy.max_per_minute == 5
    assert config.model.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_env_override_from_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_CLOUD_ADDRESS", "cloud.example:443")
    config = load_config(write(tmp_path, MINIMAL))  # env=None reads os.environ
    assert config.cloud.address == "cloud.example:443"


def test_env_can_supply_required_keys():
    env = {"EDGE_AGENT_DEVICE_ID": "cam-9", "EDGE_AGENT_SOURCE_PATH": "/v", "EDGE_AGENT_MODEL_BUNDLE_DIR": "/b"}
    config = build_config({}, env=env)
    assert (config.device.id, config.source.path, config.model.bundle_dir) == ("cam-9", "/v", "/b")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("EDGE_AGENT_POLICY_MAX_PER_MINUTE", "many"),
        ("EDGE_AGENT_POLICY_THRESHOLD", "high"),
        ("EDGE_AGENT_POLICY_MAX_PER_MINUTE", "2.5"),
        ("EDGE_AGENT_CLOUD_WATCH_MODELS", "yes"),
    ],
)
def test_bad_env_value_names_the_variable(var, value):
    with pytest.raises(ConfigError, match=var):
        build_config(REQUIRED, env={var: value})


# --- required keys and value checks ----------------------------------------------------------


@pytest.mark.parametrize("missing", ["device.id", "source.path", "model.bundle_dir"])
def test_missing_required_key(missing):
    section, key = missing.split(".")
    data = {s: dict(v) for s, v in REQUIRED.items()}
    del data[section][key]
    with pytest.raises(ConfigError, match=rf"{missing} is required"):
        build_config(data, env={})


def test_empty_required_key_counts_as_missing():
    data = {s: dict(v) for s, v in REQUIRED.items()}
    data["device"]["id"] = ""
    with pytest.raises(ConfigError, match=r"device\.id is required"):
        build_config(data, env={})


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("source", "type", "rtsp", "source.type"),
        ("upload", "jpeg_quality", 0, "jpeg_quality"),
        ("upload", "jpeg_quality", 101, "jpeg_quality"),
        ("cloud", "max_message_mb", 0.0, "max_message_mb"),
        ("cloud", "heartbeat_interval_s", -1.0, "heartbeat_interval_s"),
    ],
)
def test_invalid_values_rejected(section, key, value, match):
    data = {s: dict(v) for s, v in REQUIRED.items()}
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=match):
        build_config(data, env={})


@pytest.mark.parametrize(
    ("key", "value"),
    [("uncertainty_measure", "entropyy"), ("random_fraction", 1.5), ("max_per_minute", -1)],
)
def test_invalid_policy_values_are_config_errors(key, value):
    data = {s: dict(v) for s, v in REQUIRED.items()}
    data["policy"] = {key: value}
    with pytest.raises(ConfigError, match=key):
        build_config(data, env={})


def test_invalid_spool_synchronous_is_config_error():
    with pytest.raises(ConfigError, match="synchronous"):
        build_config({**REQUIRED, "spool": {"synchronous": "FUL"}}, env={})


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("source", "type", '"webcam"', "source.type"),
        ("source", "stride", "0", "source.stride"),
        ("policy", "mode", '"greedy"', "mode"),
        ("policy", "target_fraction", "0.0", "target_fraction"),
        ("cloud", "tls_cert_file", '"/etc/cert.pem"', "tls_key_file"),
        ("spool", "cap_mb", "-1.0", "spool.cap_mb"),
        ("metrics", "port", "70000", "metrics.port"),
        ("log", "format", '"xml"', "log.format"),
    ],
)
def test_invalid_production_keys_name_the_key(section, key, value, match):
    data = {name: dict(values) for name, values in REQUIRED.items()}
    data.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
    with pytest.raises(ConfigError, match=match):
        build_config(data, env={})
