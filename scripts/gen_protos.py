"""Regenerate the Python code for protos/flywheel.proto.

Usage: python scripts/gen_protos.py [--out DIR]

Writes flywheel_pb2.py, flywheel_pb2.pyi and flywheel_pb2_grpc.py next to the .proto (or into
DIR/protos/ with --out, which the staleness test uses). Needs grpcio-tools, pinned in
pyproject.toml's dev extra so the output is reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "protos/flywheel.proto"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write protos/*.py under")
    generate(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
