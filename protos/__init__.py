"""The wire contract (package edgeflywheel.v1): flywheel.proto and the code generated from it.

Never edit the *_pb2*.py files: run `python scripts/gen_protos.py`.
"""
