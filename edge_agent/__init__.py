"""edgeflywheel's device agent: score frames with an ONNX model, keep the informative ones,
upload them through a durable outbox, and hot-swap verified model bundles.

Pure modules (no I/O): `scoring`, `policy`, `preprocess`. `bundle` defines the model bundle
format shared with the cloud. Everything with I/O takes its dependencies as arguments; wiring
happens in `cli` only.

Never imports torch, faiss, sqlalchemy or cloud_selector (tests/test_imports.py proves it).
"""

__version__ = "0.1.0"
