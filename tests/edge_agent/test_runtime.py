"""Execution providers from settings, and LoadedModel on real ONNX graphs built here.

These machines' onnxruntime has only the CPU provider, so the GPU paths are covered two ways:
`resolve_providers` takes the available list as an argument (a Jetson's list is just data), and
`LoadedModel(available_providers=...)` can hand ONNX Runtime providers it cannot start, which
exercises ORT's own silent fallback for real.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.bundle import BundleError, InputSpec, Manifest, write_bundle
from edge_agent.runtime import LoadedModel, ProviderSettings, resolve_providers

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_FIRST = [TRT, CUDA, CPU]
CLASSES = ("bolt", "nut", "washer")
EMBED_DIM = 4


def build_model(path: Path, *, channels: int = 3, height: int = 8, width: int = 8, layout: str = "NCHW",
                batch: int | str = "N", embed_dim: int = EMBED_DIM, n_classes: int = len(CLASSES)) -> Path:
    """input -> global average pool -> [N, C] @ W1 = embedding [N, D]; embedding @ W2 = logits."""
    dims = [batch, height, width, channels] if layout == "NHWC" else [batch, channels, height, width]
    nodes, pooled_from = [], "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        pooled_from = "nchw"
    w1 = np.linspace(-1, 1, channels * embed_dim, dtype=np.float32).reshape(channels, embed_dim)
    w2 = np.linspace(1, -1, embed_dim * n_classes, dtype=np.float32).reshape(embed_dim, n_classes)
    nodes += [
        helper.make_node("GlobalAveragePool", [pooled_from], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n_classes]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, embed_dim])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any onnxruntime we deploy
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_bundle(tmp_path: Path, name: str = "bundle", *, model: dict | None = None, **manifest) -> Path:
    src = tmp_path / f"{name}-src"
    src.mkdir()
    build_model(src / "model.onnx", **(model or {}))
    np.save(src / "bank.npy", np.eye(EMBED_DIM, dtype=np.float32))
    fields = dict(name="tiny", version=1, classes=CLASSES, input=InputSpec(width=8, height=8, color="rgb"))
    fields.update(manifest)
    write_bundle(tmp_path / name, Manifest(**fields), {"model.onnx": src / "model.onnx", "novelty_bank.npy": src / "bank.npy"})
    return tmp_path / name


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path)


# --- resolve_providers: a pure function of settings and the available list ------------------


def test_all_available_keeps_order_and_sets_options():
    settings = ProviderSettings(providers=GPU_FIRST, cuda_device_id=1, trt_engine_cache_dir="/var/cache/trt", trt_fp16=True)
    entries, skipped = resolve_providers(settings, [TRT, CUDA, CPU])
    assert entries == [
        (TRT, {"device_id": 1, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
               "trt_engine_cache_path": "/var/cache/trt"}),
        (CUDA, {"device_id": 1}),
        CPU,
    ]
    assert skipped == []


def test_tensorrt_without_cache_dir_has_no_cache_options():
    entries, _ = resolve_providers(ProviderSettings(providers=[TRT]), [TRT, CPU])
    assert entries == [(TRT, {"device_id": 0, "trt_fp16_enable": False}), CPU]


def test_missing_tensorrt_falls_back_to_cuda(caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime"):
        entries, skipped = resolve_providers(ProviderSettings(providers=GPU_FIRST), [CUDA, CPU])
    assert entries == [(CUDA, {"device_id": 0}), CPU]
    assert skipped == [TRT]
    assert caplog.messages == [f"{TRT} is not available in this onnxruntime build; falling back to {CUDA}, {CPU}"]


def test_cpu_only_build_skips_both_gpu_providers(caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime"):
        entries, skipped = resolve_providers(ProviderSettings(providers=GPU_FIRST), ["AzureExecutionProvider", CPU])
    assert entries == [CPU] and skipped == [TRT, CUDA]
    assert len(caplog.messages) == 2 and all(m.endswith(f"falling back to {CPU}") for m in caplog.messages)


def test_tensorrt_without_cuda_available():
    entries, skipped = resolve_providers(ProviderSettings(providers=GPU_FIRST), [TRT, CPU])
    assert [e if isinstance(e, str) else e[0] for e in entries] == [TRT, CPU] and skipped == [CUDA]


def test_order_asked_is_kept_and_cpu_goes_last():
    entries, _ = resolve_providers(ProviderSettings(providers=[CPU, CUDA, TRT, CUDA]), [TRT, CUDA, CPU])
    assert [e if isinstance(e, str) else e[0] for e in entries] == [CUDA, TRT, CPU]


def test_empty_list_means_cpu():
    assert resolve_providers(ProviderSettings(providers=[]), [CPU]) == ([CPU], [])


def test_unknown_provider_is_a_clear_error():
    with pytest.raises(ValueError, match="FooExecutionProvider") as exc:
        resolve_providers(ProviderSettings(providers=["FooExecutionProvider", CPU]), [CPU])
    assert CUDA in str(exc.value) and TRT in str(exc.value)  # lists the names ORT knows


def test_resolve_touches_no_files(tmp_path):
    resolve_providers(ProviderSettings(providers=[TRT], trt_engine_cache_dir=str(tmp_path / "trt")), [TRT, CPU])
    assert not (tmp_path / "trt").exists()


def test_settings_validate():
    assert ProviderSettings(providers=[CUDA, CPU]).providers == (CUDA, CPU)
    with pytest.raises(ValueError, match="list of names"):
        ProviderSettings(providers=CPU)
    with pytest.raises(ValueError, match=">= 0"):
        ProviderSettings(warmup_runs=-1)


# --- LoadedModel -----------------------------------------------------------------------------


def test_gpu_preference_on_cpu_only_machine_runs_on_cpu(bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime"):
        model = LoadedModel(bundle, settings=ProviderSettings(providers=GPU_FIRST))
    assert model.providers == [CPU]
    assert model.skipped_providers == [TRT, CUDA]
    assert f"{TRT} is not available in this onnxruntime build; falling back to {CPU}" in caplog.messages
    assert f"{CUDA} is not available in this onnxruntime build; falling back to {CPU}" in caplog.messages
    frame = np.full((30, 40, 3), 200, np.uint8)
    result = model.infer([frame])
    assert result.probs.shape == (1, len(CLASSES)) and result.embeddings.shape == (1, EMBED_DIM)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Specified provider")  # ORT's own warning for what it drops
def test_session_that_silently_falls_back_is_logged(bundle, tmp_path, caplog):
    cache = tmp_path / "trt-cache"
    settings = ProviderSettings(providers=GPU_FIRST, trt_engine_cache_dir=str(cache))
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime"):
        # Claim every provider is available: ORT gets TensorRT and CUDA, cannot start them,
        # and quietly runs on CPU.
        model = LoadedModel(bundle, settings=settings, available_providers=ort.get_all_providers())
    assert model.skipped_providers == []
    assert model.providers == [CPU]
    assert any(m.startswith(f"ONNX Runtime could not start {TRT}, {CUDA}") for m in caplog.messages)
    assert cache.is_dir()  # created because TensorRT was selected


def test_legacy_arguments_still_work(bundle):
    model = LoadedModel(bundle, providers=[CUDA, CPU], intra_op_threads=1)
    assert model.providers == [CPU]
    assert model.settings == ProviderSettings(providers=(CUDA, CPU), intra_op_threads=1)
    assert model.session_runs == 1 + 2  # smoke run + the default warm-up


@pytest.mark.parametrize("warmup_runs", [0, 1, 5])
def test_warmup_runs_counted(bundle, warmup_runs):
    model = LoadedModel(bundle, settings=ProviderSettings(warmup_runs=warmup_runs))
    assert model.session_runs == 1 + warmup_runs
    assert len(model.warmup_latency_ms) == warmup_runs
    model.infer([np.zeros((8, 8, 3), np.uint8)])
    assert model.session_runs == 2 + warmup_runs


def test_settings_win_over_legacy_arguments(bundle):
    model = LoadedModel(bundle, providers=["FooExecutionProvider"], settings=ProviderSettings(warmup_runs=0))
    assert model.session_runs == 1


def test_unknown_provider_rejected_before_loading(bundle):
    with pytest.raises(ValueError, match="FooExecutionProvider"):
        LoadedModel(bundle, providers=["FooExecutionProvider"])


def test_embedding_dim_in_manifest_is_checked(tmp_path):
    assert LoadedModel(make_bundle(tmp_path, "ok", embedding_dim=EMBED_DIM)).embedding_dim == EMBED_DIM
    with pytest.raises(BundleError, match="embedding has 4 values, manifest says 5"):
        LoadedModel(make_bundle(tmp_path, "bad", embedding_dim=EMBED_DIM + 1))


def test_nhwc_model_matches_nchw_model(tmp_path):
    nchw = LoadedModel(make_bundle(tmp_path, "nchw"))
    nhwc = LoadedModel(make_bundle(tmp_path, "nhwc", model=dict(layout="NHWC"),
                                   input=InputSpec(width=8, height=8, color="rgb", layout="NHWC")))
    frames = [np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)]
    np.testing.assert_allclose(nhwc.infer(frames).embeddings, nchw.infer(frames).embeddings, rtol=1e-5, atol=1e-6)


def test_input_shape_mismatch_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match=r"has shape .*needs \[N, 3, 16, 16\]"):
        LoadedModel(make_bundle(tmp_path, input=InputSpec(width=16, height=16, color="rgb")))


def test_fixed_batch_of_one_serves_batched_inference(tmp_path):
    model = LoadedModel(make_bundle(tmp_path, model=dict(batch=1)), settings=ProviderSettings(warmup_runs=0))
    assert model.fixed_batch == 1
    result = model.infer_batched([np.zeros((8, 8, 3), np.uint8)] * 3, batch_size=256)
    assert result.probs.shape == (3, len(CLASSES)) and model.session_runs == 1 + 3


def test_fixed_batch_above_one_rejected(tmp_path):
    with pytest.raises(BundleError, match="fixed batch of 2"):
        LoadedModel(make_bundle(tmp_path, model=dict(batch=2)))
