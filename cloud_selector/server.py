"""Build the gRPC server: `create_server(address, ...) -> (server, port)`.

Every streaming RPC holds a worker thread while open (one upload stream and one model watch
per device), so `max_workers` bounds the fleet one process can serve; size it at
2 x devices + headroom.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog
from cloud_selector.fleet_service import FleetService, ModelsService
from cloud_selector.ingest import IngestLimits, IngestService
from edge_agent.transport import DEFAULT_MAX_MESSAGE_BYTES  # one wire limit for both sides
from protos import flywheel_pb2_grpc as pb_grpc



@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    stop_event: threading.Event

    def stop(self, grace_s: float = 2.0) -> None:
        self.stop_event.set()  # ends Watch streams promptly
        self.server.stop(grace_s).wait()


def create_server(address: str, *, catalog: Catalog, blobs: BlobStore, max_workers: int = 64,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, watch_poll_s: float = 1.0) -> RunningServer:
    """Bind (port 0 picks a free one) and start. Raises OSError if the address cannot be bound."""
    stop = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    limits = IngestLimits(max_jpeg_bytes=max_message_bytes - 64 * 1024)
    pb_grpc.add_IngestServicer_to_server(IngestService(catalog, blobs, limits), server)
    pb_grpc.add_ModelsServicer_to_server(ModelsService(catalog, blobs, stop=stop, poll_interval_s=watch_poll_s), server)
    pb_grpc.add_FleetServicer_to_server(FleetService(catalog), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    server.start()
    return RunningServer(server, port, stop)
