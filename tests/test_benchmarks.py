"""The benchmarks start and write well-formed results: each one's main() on tiny inputs, into a
temporary --out, then its JSON (with the headline keys the README quotes) and its markdown rows.
Targets are not asserted: tiny inputs say nothing about them. (B1's smoke test is elsewhere.)"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from conftest import DATA_DIR


def result(out: Path, name: str, headline_keys: set[str]) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert headline_keys <= set(data["headline"]), data["headline"]
    rows = (out / f"{name}.md").read_text().splitlines()
    assert rows and all(row.startswith("| ") and row.endswith(" |") and row.count(" | ") == 3 for row in rows), rows
    return data


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_edge_overhead_runs_on_a_few_frames(tmp_path):
    from benchmarks import edge_overhead

    out = tmp_path / "out"
    assert edge_overhead.main(["--frames", "24", "--width", "160", "--height", "120", "--models", "small_cnn",
                               "--bank-rows", "500", "--profile-frames", "8", "--out", str(out)]) == 0
    data = result(out, "edge_overhead", {"fps_ratio_vs_bare_ort", "fps_ratio_vs_bare_ort_small_cnn"})
    model = data["models"]["small_cnn"]
    assert finite_positive(data["headline"]["fps_ratio_vs_bare_ort"])
    assert model["bank_rows"] == 500 and model["frames_timed"] + model["warmup_frames"] == 24
    assert model["agent"]["p99_ms"] >= model["agent"]["p50_ms"] > 0 and model["peak_rss_mib"] > 0
    assert model["cloud_modules_loaded"] == []  # the measuring process is a device: no torch, no cloud code
    if importlib.util.find_spec("pyinstrument"):  # the bench extra; `make test` does not install it
        assert "onnxruntime run" in model["breakdown_ms"] and (out / model["profile_file"]).exists()
    else:
        assert "pyinstrument" in model["profile"]


def test_ingest_runs_with_a_few_devices(tmp_path):
    from benchmarks import ingest

    out = tmp_path / "out"
    assert ingest.main(["--devices", "2", "--per-device", "3", "--bare-factor", "1", "--jpeg-kib", "20",
                        "--backends", "embedded", "--breakdown", "2", "--out", str(out)]) == 0
    data = result(out, "ingest", {"throughput_ratio_vs_bare_grpc", "ack_latency_p99_ms_embedded",
                                  "all_acked_readable"})
    assert finite_positive(data["headline"]["throughput_ratio_vs_bare_grpc"])
    embedded = data["backends"]["embedded"]
    assert embedded["acked"] == 6 and embedded["verification"]["all_acked_readable"] is True
    assert data["headline"]["all_acked_readable"] is True
    assert embedded["store_breakdown"]["candidates"] == 2


def test_ingest_verification_catches_a_lost_blob(tmp_path):
    from benchmarks.ingest import template_candidate, template_jpeg, verify, with_comment
    from cloud_selector.cli import open_services
    from cloud_selector.ingest import IngestService

    services = open_services(tmp_path / "cloud")
    jpeg = template_jpeg(10 * 1024)
    service = IngestService(services.catalog, services.blobs)
    ids = []
    for i in range(3):
        c = template_candidate(jpeg)
        c.candidate_id, c.device_id = f"00000000-0000-4000-8000-00000000000{i}", "dev"
        c.jpeg = with_comment(jpeg, c.candidate_id)
        service.store(c)
        ids.append(c.candidate_id)
    assert verify(services.catalog, services.blobs, ids, jpeg)["all_acked_readable"] is True
    row = services.catalog.candidates(ids=[ids[1]])[0]
    services.blobs.put(row.blob_key, b"not the bytes sent")
    checked = verify(services.catalog, services.blobs, ids + ["00000000-0000-4000-8000-000000000009"], jpeg)
    assert checked["blobs_sha256_mismatch"] == 1 and checked["rows_found"] == 3
    assert checked["all_acked_readable"] is False
    services.catalog.close()


def test_selection_scale_runs_on_a_few_points(tmp_path):
    from benchmarks import selection_scale

    out = tmp_path / "out"
    assert selection_scale.main(["--n", "400", "600", "--select", "20", "--dim", "8", "--real", "0",
                                 "--out", str(out)]) == 0
    data = result(out, "selection_scale", {"time_ratio_vs_exact", "coverage_ratio_vs_exact",
                                           "coverage_ratio_vs_random"})
    assert [r["n"] for r in data["rows"]] == [400, 600] and data["headline"]["n"] == 600
    assert all(finite_positive(data["headline"][k]) for k in ("time_ratio_vs_exact", "coverage_ratio_vs_exact",
                                                              "coverage_ratio_vs_random"))
    assert all(r["engine"]["n"] == r["kcenter"]["n"] == r["random"]["n"] == 20 for r in data["rows"])


def test_kcenter_baseline_is_exact_gonzalez():
    import numpy as np

    from benchmarks.selection_scale import kcenter_greedy

    x = np.array([[1, 0], [0, 1], [-1, 0], [0.9, 0.1]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert kcenter_greedy(x, 3, block_rows=2) == [0, 2, 1]  # farthest from row 0, then from both


def test_model_push_runs_with_a_few_devices(tmp_path):
    from benchmarks import model_push

    out = tmp_path / "out"
    assert model_push.main(["--devices", "2", "--data-dir", str(DATA_DIR), "--out", str(out)]) == 0
    data = result(out, "model_push", {"head_update_bytes_ratio", "seconds_to_full_fleet"})
    assert 0 < data["headline"]["head_update_bytes_ratio"] < 1 and data["devices"] == 2
