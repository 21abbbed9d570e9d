"""The agent's channel: TLS and mutual TLS against a real server on loopback (certificates made
for the test), the device identity on every kind of call, keepalive pings the server accepts,
and clear errors for unusable credentials or TLS files."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from cloud_selector.auth import DeviceAuthenticator, enroll_device
from cloud_selector.server import ServerTls
from conftest import make_candidate
from edge_agent.transport import ClientTls, DeviceCredentials, TransportConfigError, open_channel
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc
from tls_certs import make_ca


def heartbeat(channel: grpc.Channel, device_id: str = "cam-test") -> pb.HeartbeatResponse:
    return pb_grpc.FleetStub(channel).Heartbeat(pb.HeartbeatRequest(device_id=device_id), timeout=10)


@pytest.fixture
def pki(tmp_path):
    """A server CA with a loopback server certificate, and a separate CA for device certificates."""
    server_ca = make_ca(tmp_path / "pki", "server-ca")
    device_ca = make_ca(tmp_path / "pki", "device-ca")
    return {"server_ca": server_ca, "server": server_ca.issue(tmp_path / "pki", "server"),
            "device_ca": device_ca, "device": device_ca.issue(tmp_path / "pki", "cam-test", server=False)}


def test_tls_heartbeat_with_the_ca(cloud_factory, pki):
    cloud = cloud_factory(tls=ServerTls.from_files(pki["server"].cert, pki["server"].key))
    with open_channel(cloud.address, tls=ClientTls(ca_file=str(pki["server_ca"].files.cert))) as channel:
        assert heartbeat(channel).server_time_ms > 0


@pytest.mark.parametrize("client", ["system-roots", "plaintext"])
def test_tls_server_refuses_clients_that_do_not_trust_it(cloud_factory, pki, client):
    cloud = cloud_factory(tls=ServerTls.from_files(pki["server"].cert, pki["server"].key))
    tls = ClientTls() if client == "system-roots" else None
    with open_channel(cloud.address, tls=tls) as channel:
        with pytest.raises(grpc.RpcError) as err:
            heartbeat(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cloud.services.catalog.devices() == []


def test_server_name_override(cloud_factory, pki, tmp_path):
    named = pki["server_ca"].issue(tmp_path / "pki", "named", dns_names=("cloud.example",), ips=())
    cloud = cloud_factory(tls=ServerTls.from_files(named.cert, named.key))
    ca = str(pki["server_ca"].files.cert)
    with open_channel(cloud.address, tls=ClientTls(ca_file=ca, server_name="cloud.example")) as channel:
        heartbeat(channel)
    with open_channel(cloud.address, tls=ClientTls(ca_file=ca)) as channel:  # 127.0.0.1 is not in the cert
        with pytest.raises(grpc.RpcError) as err:
            heartbeat(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_certificate_from_the_device_ca(cloud_factory, pki, tmp_path):
    cloud = cloud_factory(tls=ServerTls.from_files(pki["server"].cert, pki["server"].key, pki["device_ca"].files.cert))
    ca = str(pki["server_ca"].files.cert)
    stranger = make_ca(tmp_path / "other", "other-ca").issue(tmp_path / "other", "cam-x", server=False)
    for refused in (ClientTls(ca_file=ca), ClientTls(ca_file=ca, cert_file=str(stranger.cert),
                                                     key_file=str(stranger.key))):
        with open_channel(cloud.address, tls=refused) as channel:
            with pytest.raises(grpc.RpcError) as err:
                heartbeat(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cloud.services.catalog.devices() == []

    device = ClientTls(ca_file=ca, cert_file=str(pki["device"].cert), key_file=str(pki["device"].key))
    with open_channel(cloud.address, tls=device) as channel:
        heartbeat(channel)
    assert [d["id"] for d in cloud.services.catalog.devices()] == ["cam-test"]


def test_credentials_travel_on_every_kind_of_call(cloud_factory, pki):
    """Unary (heartbeat, install report), server streaming (watch) and bidirectional (upload),
    over TLS as in production."""
    cloud = cloud_factory(auth=DeviceAuthenticator, tls=ServerTls.from_files(pki["server"].cert, pki["server"].key))
    token = enroll_device(cloud.services.catalog, "cam-test").token
    tls = ClientTls(ca_file=str(pki["server_ca"].files.cert))
    with open_channel(cloud.address, credentials=DeviceCredentials("cam-test", token), tls=tls) as channel:
        heartbeat(channel)
        pb_grpc.ModelsStub(channel).ReportInstall(pb.InstallReport(device_id="cam-test", version=1), timeout=10)
        [ack] = pb_grpc.IngestStub(channel).Upload(iter([make_candidate("cam-test")]), timeout=10)
        assert ack.status == pb.ACK_STATUS_STORED
        watch = pb_grpc.ModelsStub(channel).Watch(pb.WatchRequest(device_id="cam-test"), timeout=0.5)
        with pytest.raises(grpc.RpcError) as err:
            next(watch)  # no model published: the stream stays open, authenticated, until the deadline
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with open_channel(cloud.address, tls=tls) as channel:  # the same calls without credentials
        with pytest.raises(grpc.RpcError) as err:
            next(pb_grpc.ModelsStub(channel).Watch(pb.WatchRequest(device_id="cam-test"), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_server_tolerates_frequent_keepalive_pings(cloud_factory):
    """A client pinging far more often than the agent's 30 s is never sent GOAWAY: an open Watch
    stream survives and later calls work. (A server with gRPC's defaults hangs up on this client
    with "too_many_pings" after about 4 s, hence the 5.5 s wait.)"""
    cloud = cloud_factory()
    options = [("grpc.keepalive_time_ms", 100), ("grpc.keepalive_timeout_ms", 1000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(cloud.address, options=options) as channel:
        heartbeat(channel)
        watch = pb_grpc.ModelsStub(channel).Watch(pb.WatchRequest(device_id="cam-test"), timeout=30)
        outcome: list = []
        reader = threading.Thread(target=lambda: outcome.append(_drain(watch)), daemon=True)
        reader.start()
        time.sleep(5.5)
        assert outcome == [], outcome  # the stream is still open
        heartbeat(channel)
        watch.cancel()
        reader.join(5)
    assert outcome == [grpc.StatusCode.CANCELLED]


def _drain(call) -> grpc.StatusCode:
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_unusable_tls_files_raise_transport_config_error(tmp_path, pki):
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cert, key = str(pki["device"].cert), str(pki["device"].key)
    for tls, needle in [(ClientTls(ca_file=missing), "cannot read the TLS CA file"),
                        (ClientTls(ca_file=str(not_pem)), "not PEM"),
                        (ClientTls(cert_file=cert), "go together"),
                        (ClientTls(cert_file=cert, key_file=missing), "client key")]:
        with pytest.raises(TransportConfigError, match=needle):
            open_channel("127.0.0.1:1", tls=tls)


def test_device_credentials_are_checked_and_read_from_a_file(tmp_path):
    for device_id, token in [("", "t"), ("cam", ""), ("cam", "tok\nen"), ("cam", " token"), ("cäm", "t")]:
        with pytest.raises(TransportConfigError):
            DeviceCredentials(device_id, token)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    assert DeviceCredentials.from_token_file("cam", token_file) == DeviceCredentials("cam", "s3cret-token")
    with pytest.raises(TransportConfigError, match="token file"):
        DeviceCredentials.from_token_file("cam", tmp_path / "nope")
    assert issubclass(TransportConfigError, ValueError)


def test_server_tls_files_are_checked_before_serving(pki, tmp_path):
    from cloud_selector.server import TlsConfigError

    server, device = pki["server"], pki["device"]
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for args, needle in [((server.cert, device.key), "does not belong"),
                         ((broken, server.key), "does not parse"),
                         ((server.cert, server.key, broken), "--tls-client-ca"),
                         ((server.cert, tmp_path / "missing.key"), "cannot read --tls-key")]:
        with pytest.raises(TlsConfigError, match=needle):
            ServerTls.from_files(*args)
