"""edge_agent must stay light enough for a camera: importing all of it pulls in no torch, faiss,
sqlalchemy or cloud_selector (checked in a fresh interpreter)."""

import json
import pkgutil
import subprocess
import sys

import edge_agent
from conftest import ROOT


def test_edge_agent_imports_no_cloud_dependencies():
    modules = [f"edge_agent.{m.name}" for m in pkgutil.iter_modules(edge_agent.__path__) if m.name != "__main__"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'faiss', 'sqlalchemy', 'cloud_selector'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert len(modules) >= 10
    assert json.loads(out.stdout) == []


def test_pure_modules_import_no_io_libraries():
    code = (
        "import json, sys\n"
        "import edge_agent.scoring, edge_agent.policy, edge_agent.embedding_codec\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'onnxruntime', 'sqlite3', 'cv2'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
