"""The end-to-end demo and the benchmark harness's shared pieces.

Datasets (`datasets`) and the one simulated camera fleet (`streams`): skewed per-device class
mixes, video-like streams where each item stays in view for a run of jittered frames, written as
MJPG files with ground-truth sidecars. Benchmarks and the demo reuse these so every measured
number comes from the same simulated fleet.
"""
