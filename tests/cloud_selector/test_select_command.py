"""`cloud-selector select --config`: LightlyOne configs run unchanged; runs are recorded with every
pick's reasons and the selection's metrics; a bad config is a one-line error naming the field."""

from __future__ import annotations

import json
import subprocess
import sys

from cloud_selector.cli import open_services
from cloud_selector.ingest import IngestService
from conftest import ROOT, make_candidate, seed_model
from protos import flywheel_pb2 as pb

LIGHTLY_DOCS_EXAMPLE = {"n_samples": 5, "strategies": [
    {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}]}


def select(data_dir, *args):
    return subprocess.run([sys.executable, "-m", "cloud_selector", "--data-dir", str(data_dir), "select", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_lightly_configs_run_unchanged_and_runs_explain_their_picks(fashion_train, tmp_path):
    data = tmp_path / "cloud"
    services = open_services(data)
    seed_model(services, fashion_train, tmp_path / "seed", per_class=2)
    ingest = IngestService(services.catalog, services.blobs)
    for i in range(40):
        assert ingest.store(make_candidate("cam-1", num_classes=4, seed=i)).status == pb.ACK_STATUS_STORED
    (tmp_path / "diverse.json").write_text(json.dumps(LIGHTLY_DOCS_EXAMPLE))
    result = select(data, "--config", str(tmp_path / "diverse.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["selected"] == 5 and summary["coverage_max_ratio"] > 0

    run = services.catalog.latest_selection_run()
    assert run["config"]["n_samples"] == 5 and run["metrics"]["picked"]["n"] == 5
    assert run["metrics"]["pool"]["size"] == 40 and len(run["metrics"]["pool"]["ids_sha256"]) == 64
    picks = services.catalog.selection_picks(run["id"])
    assert [p["rank"] for p in picks] == list(range(5))
    assert all(p["contributions"][0]["strategy"] == "DIVERSITY" for p in picks)

    mixed = {"proportion_samples": 0.2, "strategies": [
        {"input": {"type": "SCORES", "task": "classification", "score": "entropy"},
         "strategy": {"type": "THRESHOLD", "threshold": 0.4, "operation": "BIGGER_EQUAL"}},
        {"input": {"type": "PREDICTIONS", "task": "classification", "name": "CLASS_DISTRIBUTION"},
         "strategy": {"type": "BALANCE", "distribution": "UNIFORM"}},
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}},
        {"input": {"type": "METADATA", "key": "device_id"}, "strategy": {"type": "BALANCE",
                                                                        "distribution": "UNIFORM"}}]}
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    result = select(data, "--config", str(tmp_path / "mixed.json"))
    assert result.returncode == 0, result.stderr
    run = services.catalog.latest_selection_run()
    strategies = {c["strategy"] for p in services.catalog.selection_picks(run["id"]) for c in p["contributions"]}
    assert strategies == {"BALANCE", "TYPICALITY"}  # THRESHOLD filters, it does not score


def test_bad_config_names_the_field(tmp_path):
    bad = {"n_samples": 5, "strategies": [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSE"}}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = select(tmp_path / "cloud", "--config", str(tmp_path / "bad.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "strategies[0].strategy.type" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "broken.json").write_text("{")
    result = select(tmp_path / "cloud", "--config", str(tmp_path / "broken.json"))
    assert result.returncode == 2 and "not a readable JSON" in result.stderr
