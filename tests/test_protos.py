"""The generated code in protos/ must match what scripts/gen_protos.py produces from the .proto."""

import subprocess
import sys

from conftest import ROOT


def test_generated_code_is_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    for name in ("flywheel_pb2.py", "flywheel_pb2.pyi", "flywheel_pb2_grpc.py"):
        fresh = (tmp_path / "protos" / name).read_text()
        committed = (ROOT / "protos" / name).read_text()
        assert fresh == committed, f"protos/{name} is stale: run `python scripts/gen_protos.py`"


def test_contract_has_the_v1_services():
    from protos import flywheel_pb2 as pb

    services = pb.DESCRIPTOR.services_by_name
    assert pb.DESCRIPTOR.package == "edgeflywheel.v1"
    assert services["Ingest"].methods_by_name["Upload"].client_streaming
    assert services["Ingest"].methods_by_name["Upload"].server_streaming
    assert services["Models"].methods_by_name["Watch"].server_streaming
    assert "offset" in pb.FetchRequest.DESCRIPTOR.fields_by_name
    fields = pb.Candidate.DESCRIPTOR.fields_by_name
    for name in ("candidate_id", "device_id", "capture_time_ms", "model_version", "jpeg", "width", "height",
                 "embedding", "probabilities", "scores", "reason", "metadata"):
        assert name in fields
