"""gRPC plumbing shared by the uploader, the model updater and the heartbeat.

Retries of unary calls are a channel service config (gRPC's own retry machinery), not
hand-written loops; streams reconnect in their owners with `Backoff`.
"""

from __future__ import annotations

import json
import random
import threading

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "edgeflywheel.v1.Fleet"},
                    {"service": "edgeflywheel.v1.Models", "method": "ReportInstall"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """An insecure channel to the cloud (TLS and device credentials come with device auth)."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ],
    )


class Backoff:
    """Exponential backoff with full jitter; `reset()` after a success."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None):
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2**self._attempt))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.next_delay())
