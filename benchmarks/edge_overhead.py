"""B2 — edge agent overhead: the whole agent path against a bare ONNX Runtime loop.

    python -m benchmarks.edge_overhead [--quick] [--frames N] [--models NAME ...] [--out DIR]

Frames: a video-like sequence of camera frames (640x480 by default; scenes cut from the photos
scikit-learn ships, else procedural textures), panning a few pixels a frame so that neighbours
are near-duplicates, written as JPEG files (quality 90) with modification times 1/30 s apart
(a 30 fps camera: the keep policy paces its budgets on capture time).

Models, each as a real bundle: ``mobilenet_v2_224``, the ImageNet MobileNetV2 backbone at
224x224 RGB with a linear head (``cloud_selector.head_trainer.initial_bundle``, 1280-d
embedding); ``small_cnn``, the from-scratch small CNN (28x28 grey, 64-d). The bundle's
novelty bank is replaced, once loaded, by a 10k x D bank (its own rows, jittered), so the
novelty k-NN costs what it costs on a device with a full bank.

Per model, in a fresh process that imports only what a device does (numpy, OpenCV, ONNX
Runtime, edge_agent: no torch in its memory), with 1 ONNX Runtime intra-op thread and BLAS
limited to 1 thread:

- bare: ``cv2.imread`` of each file, then the few lines anyone would write (INTER_AREA
  resize, colour order, scale and normalise) and ``InferenceSession.run`` on a session
  created with the same options;
- agent: ``edge_agent.sources.ImageFolderSource`` over the same files (it decodes them with
  ``cv2.imread``) feeding ``Agent.process``: preprocess, inference, scores, novelty k-NN,
  health record, keep policy with the repeat check, JPEG encode and spool write (SQLite,
  synchronous=FULL, the agent's default) for kept frames, and the file source's progress
  (a committed row per image) for the others. The agent's defaults throughout
  (PolicyConfig(), RecentFrames(), the default spool);
- agent_live: a second agent fed the same decoded files as a live source (``live = True``,
  like a camera), which records no per-file progress.

The three loops run interleaved in blocks of 20 frames (order reversed every block) so that a
noisy neighbour on the machine slows them alike. Per-frame time excludes the JPEG decode, which
all pay identically (reported as ``fps_ratio_including_decode`` too). Then a profiling pass of
the file-source agent alone under pyinstrument, on fresh file names, gives where its time goes
(``breakdown_ms``; the text profile goes to ``<out>/edge_overhead_profile_<model>.txt``).

Headline (``<out>/edge_overhead.json``): ``fps_ratio_vs_bare_ort`` = agent frames/s / bare
frames/s on MobileNetV2-224 with the image-folder source (target >= 0.9); per model
``fps_ratio_vs_bare_ort_<model>`` and ``..._<model>_live``. Also p50/p99 ms per frame, the
measuring process's peak RSS (VmHWM), bytes spooled per kept frame.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

TARGET_RATIO = 0.9
BLOCK = 20  # frames per interleaved block
FPS = 30
MODELS = ("mobilenet_v2_224", "small_cnn")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (label, function name, substring of its file path): where the agent's time goes.
BREAKDOWN = (
    ("decode (source)", "frames", "edge_agent/sources"),
    ("preprocess", "preprocess", "edge_agent/preprocess"),
    ("onnxruntime run", "run", "onnxruntime"),
    ("softmax", "softmax", "edge_agent/scoring"),
    ("scores", "score_frame", "edge_agent/scoring"),
    ("novelty k-NN", "distance", "edge_agent/scoring"),
    ("health record", "record", "edge_agent/health"),
    ("latency record", "record", "edge_agent/metrics"),
    ("policy", "decide", "edge_agent/policy"),
    ("repeat check", "is_repeat", "edge_agent/appearance"),
    ("candidate (JPEG + protobuf)", "_candidate", "edge_agent/agent"),
    ("jpeg encode", "_encode", "edge_agent/agent"),
    ("spool put", "put", "edge_agent/spool"),
    ("spool progress", "record_progress", "edge_agent/spool"),
)


# ---------------------------------------------------------------- frames


def _scenes(width: int, height: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Source pictures, each larger than a frame so a window can pan across it."""
    try:
        from sklearn.datasets import load_sample_images

        photos = list(load_sample_images().images)  # two 427x640 RGB photos
        photos = [cv2.cvtColor(p, cv2.COLOR_RGB2BGR) for p in photos]
    except ImportError:  # procedural textures: smooth blobs plus fine noise
        photos = []
        for _ in range(2):
            low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            big = cv2.resize(low, (640, 480), interpolation=cv2.INTER_CUBIC)
            photos.append(cv2.add(big, rng.integers(0, 40, big.shape, dtype=np.uint8)))
    scenes = []
    for zoom in (1.25, 1.5):
        for photo in photos:
            scale = zoom * max(width / photo.shape[1], height / photo.shape[0])
            size = (int(photo.shape[1] * scale) + 1, int(photo.shape[0] * scale) + 1)
            scenes.append(cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR))
    return scenes


def write_frames(folder: Path, n: int, width: int = 640, height: int = 480, seed: int = 0,
                 scene_frames: int = 30) -> list[Path]:
    """`n` JPEG frames, a new scene every `scene_frames`, mtimes 1/30 s apart; returns the paths."""
    rng = np.random.default_rng(seed)
    scenes = _scenes(width, height, rng)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time() - n / FPS - 60
    paths = []
    for i in range(n):
        scene = scenes[(i // scene_frames) % len(scenes)]
        room_x, room_y = scene.shape[1] - width, scene.shape[0] - height
        step = i % scene_frames
        x0 = int((i // scene_frames * 37 + 3 * step) % max(1, room_x))
        y0 = int((i // scene_frames * 23 + step) % max(1, room_y))
        frame = scene[y0:y0 + height, x0:x0 + width].astype(np.int16)
        frame += rng.normal(0, 3, frame.shape).astype(np.int16) + int(rng.integers(-6, 7))
        path = folder / f"frame-{i:06d}.jpg"
        cv2.imwrite(str(path), np.clip(frame, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        os.utime(path, (start + i / FPS, start + i / FPS))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- bundles (torch: parent only)


def build_bundle(name: str, out_dir: Path, frames: list[Path], work: Path) -> Path:
    """A bundle for model `name`, its head trained on a few frames labelled by scene."""
    from cloud_selector.head_trainer import initial_bundle
    from cloud_selector.trainer import TrainConfig
    from edge_agent.bundle import InputSpec

    step = max(1, len(frames) // 16)
    picked = frames[::step][:16]
    images = [cv2.imread(str(p)) for p in picked]
    labels = [int(p.stem.split("-")[1]) // 30 % 2 for p in picked]
    if len(set(labels)) < 2:  # too few frames for two scenes: any split will do
        labels = [i % 2 for i in range(len(images))]
    common = dict(frames_bgr=images, labels=labels, classes=("scene-a", "scene-b"), name=f"b2-{name}",
                  label_set={"count": len(labels)}, workdir=work / f"w-{name}")
    if name == "mobilenet_v2_224":
        spec = InputSpec(width=224, height=224, color="rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="stretch")
        initial_bundle(out_dir, arch="mobilenet_v2", spec=spec, **common)
    elif name == "small_cnn":
        initial_bundle(out_dir, arch="small_cnn", config=TrainConfig(epochs=2, val_fraction=0.0, patience=0), **common)
    else:
        raise ValueError(f"unknown model {name!r}; use one of {MODELS}")
    return out_dir


# ---------------------------------------------------------------- the measuring child


def _bare_preprocess(spec):
    """What a user writes around a bare session: resize, colour order, normalise."""
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    size = (spec.width, spec.height)
    if spec.color == "gray":
        def gray(frame: np.ndarray) -> np.ndarray:
            img = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), size, interpolation=cv2.INTER_AREA)
            return ((img.astype(np.float32) / 255.0 - mean) / std)[None, None]
        return gray

    def color(frame: np.ndarray) -> np.ndarray:
        img = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        if spec.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        x = (img.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    return color


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc: unlike getrusage's ru_maxrss,
    which survives execve and so would report the parent's (torch-sized) peak, VmHWM starts
    afresh with this program."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _bank(model, rows: int, seed: int) -> np.ndarray:
    """`rows` embeddings: the bundle's own bank rows, repeated with a little noise."""
    base = np.load(model.bundle_dir / model.manifest.novelty_bank_file).astype(np.float32)
    if len(base) == 0:
        base = np.random.default_rng(seed).standard_normal((1, model.embedding_dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    picked = base[rng.integers(0, len(base), rows)]
    scale = float(np.abs(base).mean()) or 1.0
    picked += rng.standard_normal(picked.shape, dtype=np.float32) * np.float32(0.1 * scale)
    return picked


def _walk(node, active: frozenset, totals: dict) -> None:
    for label, function, path in BREAKDOWN:
        if label not in active and node.function == function and path in (node.file_path or ""):
            totals[label] = totals.get(label, 0.0) + node.time
            active = active | {label}
    for child in node.children:
        _walk(child, active, totals)


class JpegCamera:
    """A live source (like a camera: `live = True`, so no per-file progress) over JPEG files,
    decoded with cv2.imread, capture times 1/30 s apart."""

    live = True

    def __init__(self, paths: list[Path], name: str = "cam0"):
        self.paths = paths
        self.name = name

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None):
        from edge_agent.sources.base import Frame

        start_ms = int(time.time() * 1000)
        for i, path in enumerate(self.paths):
            if stop.is_set():
                return
            yield Frame(image=cv2.imread(str(path), cv2.IMREAD_COLOR), source=self.name, index=i,
                        capture_time_ms=start_ms + i * 1000 // FPS, source_name=self.name)


def measure(job: dict) -> dict:
    """Run in the child: the bare loop and the agent (file source and live source) interleaved,
    then a profiled pass of the agent on the file source."""
    import onnxruntime as ort

    from edge_agent.agent import Agent
    from edge_agent.appearance import RecentFrames
    from edge_agent.bundle import verify_bundle
    from edge_agent.health import HealthMonitor
    from edge_agent.policy import KeepPolicy, PolicyConfig
    from edge_agent.runtime import LoadedModel, ProviderSettings
    from edge_agent.scoring import NoveltyBank
    from edge_agent.sources.files import ImageFolderSource
    from edge_agent.spool import Spool
    from edge_agent.updater import ModelSlot

    bundle, frames_dir, spool_dir = Path(job["bundle"]), Path(job["frames_dir"]), Path(job["spool_dir"])
    paths = sorted(frames_dir.glob("*.jpg"))
    rss_start = _status_mib("VmRSS")
    manifest = verify_bundle(bundle)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(bundle / manifest.model_file), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    bare_input = _bare_preprocess(manifest.input)
    input_name = manifest.input_name

    model = LoadedModel(bundle, settings=ProviderSettings(intra_op_threads=1))
    model.bank = NoveltyBank(_bank(model, job["bank_rows"], job["seed"]), k=model.manifest.novelty_k,
                             quantiles=model.manifest.novelty_quantiles)
    stop = threading.Event()
    agents, iterators = {}, {}
    for name, source in (("agent", ImageFolderSource(frames_dir)), ("agent_live", JpegCamera(paths))):
        agents[name] = Agent(device_id=f"b2-{name}", source=source, slot=ModelSlot(model),
                             policy=KeepPolicy(PolicyConfig()), spool=Spool(spool_dir / name / "spool.sqlite"),
                             recent=RecentFrames(), health=HealthMonitor())
        iterators[name] = source.frames(stop)
    rss_loaded = _status_mib("VmRSS")

    def bare(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        image = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        session.run(None, {input_name: bare_input(image)})
        return t1 - t0, time.perf_counter() - t1

    def step(name: str):
        agent, frames = agents[name], iterators[name]

        def one(i: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            frame = next(frames)  # the source decodes the JPEG
            t1 = time.perf_counter()
            agent.process(frame)
            return t1 - t0, time.perf_counter() - t1
        return one

    runs = {"bare": bare, "agent": step("agent"), "agent_live": step("agent_live")}
    warmup = min(job["warmup"], len(paths) // 4)
    for i in range(warmup):  # first runs allocate; the agents' also start their policy windows
        for run_one in runs.values():
            run_one(i)
    timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runs}
    for b, start in enumerate(range(warmup, len(paths), BLOCK)):
        order = list(runs) if b % 2 == 0 else list(reversed(runs))
        for name in order:
            decode, work = timings[name]
            for i in range(start, min(start + BLOCK, len(paths))):
                d, w = runs[name](i)
                decode.append(d * 1000)
                work.append(w * 1000)
    result: dict = {"frames_timed": len(timings["bare"][1]), "warmup_frames": warmup}
    for name, (decode, work) in timings.items():
        total_s = sum(work) / 1000
        result[name] = {"fps": round(len(work) / total_s, 2), **_percentiles(work),
                        "fps_including_decode": round(len(work) / (total_s + sum(decode) / 1000), 2),
                        "decode_p50_ms": round(float(np.median(decode)), 3)}
    for name in agents:
        suffix = "" if name == "agent" else "_live"
        result[f"fps_ratio{suffix}"] = round(result[name]["fps"] / result["bare"]["fps"], 4)
        result[f"fps_ratio{suffix}_including_decode"] = round(
            result[name]["fps_including_decode"] / result["bare"]["fps_including_decode"], 4)
    kept = {name: a.stats.frames_kept for name, a in agents.items()}
    spooled = sum(a.spool.stats().pending_bytes for a in agents.values())
    spool_files = sum(p.stat().st_size for p in spool_dir.glob("*/spool.sqlite*"))
    agent = agents["agent"]
    result.update({
        "frames_kept": kept["agent"], "kept_fraction": round(kept["agent"] / max(1, agent.stats.frames_seen), 4),
        "kept_reasons": dict(agent.stats.kept), "dropped_reasons": dict(agent.stats.dropped),
        "frames_kept_live": kept["agent_live"],
        "bytes_spooled_per_kept_frame": round(spooled / sum(kept.values())) if sum(kept.values()) else 0,
        "spool_file_bytes_per_kept_frame": round(spool_files / sum(kept.values())) if sum(kept.values()) else 0,
        "embedding_dim": model.embedding_dim, "bank_rows": len(model.bank),
        "bank_mib": round(len(model.bank) * model.embedding_dim * 4 / 2**20, 1),
        "input": f"{manifest.input.width}x{manifest.input.height} {manifest.input.color}",
        "rss_mib_at_start": round(rss_start, 1), "rss_mib_after_load": round(rss_loaded, 1),
        "peak_rss_mib": round(_status_mib("VmHWM"), 1),
        "cloud_modules_loaded": sorted(m for m in ("torch", "faiss", "sqlalchemy", "cloud_selector") if m in sys.modules),
    })
    if job.get("profile_frames"):
        # Fresh file names (hard links to the same JPEGs): the source progress of a file seen
        # before is an unchanged row, which SQLite does not write again.
        again = spool_dir / "profile-frames"
        again.mkdir()
        for path in paths[:job["profile_frames"]]:
            os.link(path, again / f"p-{path.name}")
        result.update(_profile(agent, ImageFolderSource(again), stop, Path(job["profile_out"])))
    stop.set()
    for a in agents.values():
        a.spool.close()
    return result


def _profile(agent, source, stop, out: Path) -> dict:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {"profile": "pyinstrument is not installed (pip install -e '.[bench]')"}
    agent.source = source
    profiler = Profiler(interval=0.0002)
    seen = 0
    profiler.start()
    for frame in source.frames(stop):
        agent.process(frame)
        seen += 1
    profiler.stop()
    root = profiler.last_session.root_frame()
    totals: dict[str, float] = {}
    _walk(root, frozenset(), totals)
    out.write_text(profiler.output_text(unicode=False, color=False))
    process = sum(node.time for node in _find(root, "process", "edge_agent/agent"))
    return {"profile_frames": seen, "profile_file": out.name,
            "breakdown_ms": {k: round(v * 1000 / max(1, seen), 3) for k, v in totals.items()},
            "process_ms_profiled": round(process * 1000 / max(1, seen), 3),
            "breakdown_share_of_process": {k: round(v / process, 4) for k, v in totals.items()
                                           if k != "decode (source)" and process > 0}}


def _find(node, function: str, path: str):
    if node.function == function and path in (node.file_path or ""):
        yield node
        return
    for child in node.children:
        yield from _find(child, function, path)


# ---------------------------------------------------------------- parent


def run(models: list[str], n_frames: int, work: Path, out: Path, *, width: int = 640, height: int = 480,
        bank_rows: int = 10_000, profile_frames: int = 100, warmup: int = 10, seed: int = 0) -> dict:
    frames_dir = work / "frames"
    paths = write_frames(frames_dir, n_frames, width, height, seed)
    per_model = {}
    for name in models:
        started = time.perf_counter()
        bundle = build_bundle(name, work / f"bundle-{name}", paths, work)
        build_s = time.perf_counter() - started
        job = {"bundle": str(bundle), "frames_dir": str(frames_dir), "bank_rows": bank_rows, "seed": seed,
               "warmup": warmup, "spool_dir": str(work / f"spool-{name}"), "profile_frames": profile_frames,
               "profile_out": str(out / f"edge_overhead_profile_{name}.txt")}
        job_file = work / f"job-{name}.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "benchmarks.edge_overhead", "--measure", str(job_file)],
                              env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"measuring {name} failed:\n{done.stderr[-4000:]}")
        per_model[name] = {"bundle_build_s": round(build_s, 1), **json.loads((work / f"job-{name}.result.json").read_text())}
        m = per_model[name]
        print(f"{name}: agent {m['agent']['fps']:.1f} fps (live source {m['agent_live']['fps']:.1f}) vs bare "
              f"{m['bare']['fps']:.1f} fps, ratio {m['fps_ratio']:.3f} (live {m['fps_ratio_live']:.3f})", flush=True)
    first = per_model.get("mobilenet_v2_224") or per_model[models[0]]
    headline = {"fps_ratio_vs_bare_ort": first["fps_ratio"],
                **{f"fps_ratio_vs_bare_ort_{k}": v["fps_ratio"] for k, v in per_model.items()},
                **{f"fps_ratio_vs_bare_ort_{k}_live": v["fps_ratio_live"] for k, v in per_model.items()},
                "agent_p99_ms": first["agent"]["p99_ms"], "bare_p99_ms": first["bare"]["p99_ms"],
                "peak_rss_mib": first["peak_rss_mib"],
                "bytes_spooled_per_kept_frame": first["bytes_spooled_per_kept_frame"]}
    return {"benchmark": "B2", "name": "edge_overhead", "frames": n_frames, "frame_size": f"{width}x{height}",
            "bank_rows": bank_rows, "intra_op_threads": 1, "cpus": os.cpu_count(), "models": per_model,
            "target": f"fps_ratio_vs_bare_ort >= {TARGET_RATIO}", "headline": headline}


def summary(result: dict) -> str:
    lines = []
    for name, m in result["models"].items():
        for key, agent, source in (("fps_ratio", "agent", "image folder"), ("fps_ratio_live", "agent_live", "live")):
            ok = "meets" if m[key] >= TARGET_RATIO else "misses"
            lines.append(f"| B2 edge overhead ({name}, {source} source, {result['frame_size']} JPEGs, "
                         f"{m['bank_rows']} x {m['embedding_dim']} bank) | fps_ratio_vs_bare_ort | {m[key]:.3f} "
                         f"({m[agent]['fps']:.0f} vs {m['bare']['fps']:.0f} fps; p99 {m[agent]['p99_ms']:.1f} vs "
                         f"{m['bare']['p99_ms']:.1f} ms) | >= {TARGET_RATIO} ({ok}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames (default 300; full 1500)")
    parser.add_argument("--frames", type=int, default=0, help="frames per model (overrides --quick)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--bank-rows", type=int, default=10_000, help="novelty bank rows (default 10000)")
    parser.add_argument("--profile-frames", type=int, default=-1, help="frames in the profiled pass (0 = none)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where edge_overhead.json/.md go")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the measuring child
    args = parser.parse_args(argv)
    if args.measure:
        job = json.loads(args.measure.read_text())
        result = measure(job)
        args.measure.with_suffix(".result.json").write_text(json.dumps(result))
        return 0
    n = args.frames or (300 if args.quick else 1500)
    if n < 8 or args.bank_rows < 1:
        parser.error("--frames must be >= 8 and --bank-rows >= 1")
    profile = args.profile_frames if args.profile_frames >= 0 else min(n, 100 if args.quick else 300)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="b2-") as tmp:
        result = run(args.models, n, Path(tmp), args.out.resolve(), width=args.width, height=args.height,
                     bank_rows=args.bank_rows, profile_frames=profile)
    result["quick"] = args.quick
    (args.out / "edge_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "edge_overhead.md").write_text(summary(result))
    print(json.dumps(result["headline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
