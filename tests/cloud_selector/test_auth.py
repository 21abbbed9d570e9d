"""Device authentication on every RPC, and the `devices` CLI that issues and revokes tokens.

A rejected call must write nothing: no candidate row, no blob file (temp files included), no
heartbeat or install row. Real server on loopback, real SQLite, real agent channel."""

from __future__ import annotations

import hashlib
import queue
import re
import subprocess
import sys
import time

import grpc
import pytest

from cloud_selector.auth import DeviceAuthenticator, enroll_device, revoke_device
from cloud_selector.catalog import installs
from cloud_selector.cli import main
from cloud_selector.ingest import IngestService
from conftest import ROOT, make_candidate
from edge_agent.transport import DeviceCredentials, open_channel
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc


@pytest.fixture
def secured(cloud_factory):
    """A server that requires tokens, with devices cam-a and cam-b enrolled; returns (cloud, tokens)."""
    cloud = cloud_factory(auth=DeviceAuthenticator)
    tokens = {name: enroll_device(cloud.services.catalog, name).token for name in ("cam-a", "cam-b")}
    return cloud, tokens


def upload(channel: grpc.Channel, *candidates: pb.Candidate) -> list[pb.Ack]:
    return list(pb_grpc.IngestStub(channel).Upload(iter(candidates), timeout=10))


def heartbeat(channel: grpc.Channel, device_id: str) -> pb.HeartbeatResponse:
    return pb_grpc.FleetStub(channel).Heartbeat(pb.HeartbeatRequest(device_id=device_id, frames_seen=3), timeout=10)


def report_install(channel: grpc.Channel, device_id: str) -> pb.InstallReportAck:
    return pb_grpc.ModelsStub(channel).ReportInstall(
        pb.InstallReport(device_id=device_id, version=1, status=pb.INSTALL_STATUS_INSTALLED), timeout=10)


def assert_nothing_written(cloud) -> None:
    assert cloud.candidate_count() == 0
    assert cloud.blob_files() == []
    assert cloud.services.catalog.devices() == []


@pytest.mark.parametrize("credentials", [
    None,
    DeviceCredentials("cam-a", "not-the-token"),
    DeviceCredentials("cam-zz", "no-such-device"),
], ids=["no-token", "wrong-token", "unknown-device"])
def test_unauthenticated_calls_are_refused_and_write_nothing(secured, credentials):
    cloud, _ = secured
    with open_channel(cloud.address, credentials=credentials) as channel:
        for call in (lambda: upload(channel, make_candidate("cam-a")), lambda: heartbeat(channel, "cam-a"),
                     lambda: report_install(channel, "cam-a")):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_nothing_written(cloud)


def test_a_token_in_the_wrong_scheme_is_refused(secured):
    cloud, tokens = secured
    with grpc.insecure_channel(cloud.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FleetStub(channel).Heartbeat(pb.HeartbeatRequest(device_id="cam-a"), timeout=10, metadata=(
                ("x-device-id", "cam-a"), ("authorization", f"Basic {tokens['cam-a']}")))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_nothing_written(cloud)


def test_revoked_device_is_refused(secured):
    cloud, tokens = secured
    revoke_device(cloud.services.catalog, "cam-b")
    with open_channel(cloud.address, credentials=DeviceCredentials("cam-b", tokens["cam-b"])) as channel:
        for call in (lambda: upload(channel, make_candidate("cam-b")), lambda: heartbeat(channel, "cam-b")):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in err.value.details()
    assert_nothing_written(cloud)


def test_device_claiming_another_device_is_denied(secured):
    cloud, tokens = secured
    with open_channel(cloud.address, credentials=DeviceCredentials("cam-a", tokens["cam-a"])) as channel:
        calls = {
            "upload": lambda: upload(channel, make_candidate("cam-b")),
            "heartbeat": lambda: heartbeat(channel, "cam-b"),
            "install report": lambda: report_install(channel, "cam-b"),
            "watch": lambda: next(pb_grpc.ModelsStub(channel).Watch(pb.WatchRequest(device_id="cam-b"), timeout=10)),
            "fetch": lambda: next(pb_grpc.ModelsStub(channel).Fetch(
                pb.FetchRequest(device_id="cam-b", version=1, path="manifest.json"), timeout=10)),
        }
        for what, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
    assert_nothing_written(cloud)
    with cloud.services.catalog.engine.connect() as conn:
        assert conn.execute(installs.select()).first() is None


def test_good_token_uploads_heartbeats_and_reports(secured):
    cloud, tokens = secured
    with open_channel(cloud.address, credentials=DeviceCredentials("cam-a", tokens["cam-a"])) as channel:
        acks = upload(channel, make_candidate("cam-a"), make_candidate("cam-a", seed=1))
        heartbeat(channel, "cam-a")
        report_install(channel, "cam-a")
    assert [a.status for a in acks] == [pb.ACK_STATUS_STORED] * 2
    assert cloud.candidate_count() == 2 and len(cloud.blob_files()) == 2
    assert [d["id"] for d in cloud.services.catalog.devices()] == ["cam-a"]


def test_revocation_ends_an_open_upload_stream(cloud_factory):
    cloud = cloud_factory(auth=lambda catalog: DeviceAuthenticator(catalog, recheck_s=0.0))
    catalog = cloud.services.catalog
    token = enroll_device(catalog, "cam-a").token
    outbox: queue.Queue = queue.Queue()
    with open_channel(cloud.address, credentials=DeviceCredentials("cam-a", token)) as channel:
        responses = pb_grpc.IngestStub(channel).Upload(iter(outbox.get, None), timeout=10)
        outbox.put(make_candidate("cam-a"))
        assert next(responses).status == pb.ACK_STATUS_STORED
        revoke_device(catalog, "cam-a")
        outbox.put(make_candidate("cam-a", seed=1))
        with pytest.raises(grpc.RpcError) as err:
            next(responses)
        outbox.put(None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cloud.candidate_count() == 1 and len(cloud.blob_files()) == 1


# ------------------------------------------------------------------ the devices CLI


def cli(capsys, data_dir, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), "devices", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_devices_add_list_revoke(capsys, tmp_path, cloud_factory):
    data_dir = tmp_path / "cloud"
    code, out, _ = cli(capsys, data_dir, "add", "cam-1")
    assert code == 0
    token = re.search(r'^token = "([^"]+)"$', out, re.MULTILINE).group(1)
    assert re.search(r'^\[device\]\nid = "cam-1"\ntoken = "', out, re.MULTILINE)
    assert len(token) >= 43  # 32 random bytes, base64url

    # The catalog holds only the hash: the token appears in no file of the data directory.
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files and not any(token.encode() in p.read_bytes() for p in files)

    # The printed token works against a server on this data directory.
    cloud = cloud_factory(name="cloud", auth=DeviceAuthenticator)
    stored = cloud.services.catalog.device_credential("cam-1")
    assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    with open_channel(cloud.address, credentials=DeviceCredentials("cam-1", token)) as channel:
        heartbeat(channel, "cam-1")

    assert_one_line_error(*cli(capsys, data_dir, "add", "cam-1")[::2], "already exists")
    assert_one_line_error(*cli(capsys, data_dir, "add", "bad name!")[::2], "A-Z a-z 0-9")
    assert_one_line_error(*cli(capsys, data_dir, "add", "x" * 65)[::2], "1-64")
    assert_one_line_error(*cli(capsys, data_dir, "revoke", "nobody")[::2], "no device 'nobody'")
    assert cli(capsys, data_dir, "add", "cam-2")[0] == 0

    code, out, _ = cli(capsys, data_dir, "revoke", "cam-1")
    assert code == 0 and "revoked cam-1" in out
    code, out, _ = cli(capsys, data_dir, "list")
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert rows[0] == ["id", "created", "revoked", "last_seen"]
    assert [r[0] for r in rows[1:]] == ["cam-1", "cam-2"]
    cam1, cam2 = rows[1], rows[2]
    assert cam1[2].endswith("Z") and cam1[3].endswith("Z")  # revoked; seen by the heartbeat above
    assert cam2[2] == "-" and cam2[3] == "-"

    with open_channel(cloud.address, credentials=DeviceCredentials("cam-1", token)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            heartbeat(channel, "cam-1")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_serve_refuses_unreadable_certificates(capsys, tmp_path):
    data_dir = str(tmp_path / "cloud")
    missing = str(tmp_path / "nope.pem")
    code = main(["--data-dir", data_dir, "serve", "--grpc-address", "127.0.0.1:0", "--tls-cert", missing,
                 "--tls-key", missing])
    assert_one_line_error(code, capsys.readouterr().err, "cannot read --tls-cert")
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("hello")
    code = main(["--data-dir", data_dir, "serve", "--tls-cert", str(not_pem), "--tls-key", str(not_pem)])
    assert_one_line_error(code, capsys.readouterr().err, "not a PEM certificate")
    code = main(["--data-dir", data_dir, "serve", "--tls-cert", str(not_pem)])
    assert_one_line_error(code, capsys.readouterr().err, "--tls-key")


class _Aborted(Exception):
    pass


class _ContextWithoutToken:
    """The part of grpc.ServicerContext the authenticator reads: metadata, and abort (which raises)."""

    code = None

    def invocation_metadata(self):
        return (("x-device-id", "cam-a"),)

    def abort(self, code, details):
        self.code = code
        raise _Aborted(details)


def test_upload_authenticates_before_touching_the_request_iterator(secured):
    cloud, _ = secured
    service = IngestService(cloud.services.catalog, cloud.services.blobs,
                            auth=DeviceAuthenticator(cloud.services.catalog))
    touched = []

    def requests():
        touched.append(True)
        yield make_candidate("cam-a")

    context = _ContextWithoutToken()
    with pytest.raises(_Aborted):
        next(service.Upload(requests(), context))
    assert context.code == grpc.StatusCode.UNAUTHENTICATED and touched == []
    assert_nothing_written(cloud)


def test_serve_requires_tokens_by_default(capsys, tmp_path):
    """`cloud-selector serve` as users start it: no token, no service; the issued token works."""
    data_dir, port_file = tmp_path / "cloud", tmp_path / "port"
    code, out, _ = cli(capsys, data_dir, "add", "cam-1")
    token = re.search(r'^token = "([^"]+)"$', out, re.MULTILINE).group(1)
    server = subprocess.Popen([sys.executable, "-m", "cloud_selector", "--data-dir", str(data_dir), "serve",
                               "--grpc-address", "127.0.0.1:0", "--port-file", str(port_file)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        with open_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                heartbeat(channel, "cam-1")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with open_channel(address, credentials=DeviceCredentials("cam-1", token)) as channel:
            heartbeat(channel, "cam-1")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0 and "accepts UNAUTHENTICATED calls" not in stderr
