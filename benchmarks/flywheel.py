"""B1, the flywheel against random: for the same labeling budget, how much better does the model
get when the fleet uploads and the cloud selects with edgeflywheel than with random choices?

    python -m benchmarks.flywheel [--quick] [--dataset PATH] [--seeds N] [--rounds R]
                                  [--devices D] [--model mobilenet_v2|small_cnn] [--out DIR]

Per seed, one world (benchmarks/flywheel_data.py): a seed set of 10 labels per class, one class
held back until `--novel-round`, skewed Dirichlet class mixes per camera, video-like streams (an
item in view for 4-12 jittered frames), and one camera with its own mix joining mid-way. Every
arm sees exactly that world, under the same upload budget (share of frames) and the same
labels per round:

  1 random upload + random selection (the baseline)      2 edge uncertainty only
  3 edge novelty only                                     4 close to threshold (Roboflow-like)
  5 the full pipeline, product defaults                   6 scikit-activeml over every frame
  7 every frame labeled (upper bound)                       (UncertaintySampling, TypiClust, CoreSet)

Arms 1-5 run the real code end to end (benchmarks/flywheel_fleet.py: agents, spools, gRPC
uploads, run_round, oracle labels, retrain, signed release, ModelUpdater hot-swap); arms 6-7
are pure selection over every frame and do not stream through agents (benchmarks/flywheel_arms.py).

Writes `<out>/flywheel.json` (every arm's per-round records per seed, and `headline`: means and
spread over seeds of the B1 ratios), `<out>/flywheel.png` and `<out>/flywheel.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.flywheel_arms import ARMS, Evaluator, resolve_arms
from benchmarks.flywheel_data import (UPLOAD_JPEG_QUALITY, Sizes, decode, jpeg, load_data, make_scenario,
                                      render_stream, seed_frames, eval_frames, write_seed_folder)
from benchmarks.flywheel_report import arm_summary, headline, markdown, plot
from benchmarks.flywheel_runner import SeedContext, collect_frames, run_pool_arms, run_stream_arm, training_noise
from cloud_selector.head_trainer import initial_bundle
from cloud_selector.retrain import DEFAULT_INPUT
from cloud_selector.trainer import TrainConfig
from flywheel_demo.streams import render_clean

log = logging.getLogger("benchmarks.flywheel")

QUICK = dict(devices=3, rounds=3, items=60, select=12, seeds=1, test_size=2000)
FULL = dict(devices=4, rounds=6, items=150, select=50, seeds=3, test_size=10_000)
HOLDOUT_PER_CLASS = 20
POOL_NOTE = ("pure selection over every frame: does not stream through agents; bytes = JPEG bytes of every frame "
             "(the fleet uploads everything)")


def _default_novel(classes: tuple[str, ...]) -> int:
    return classes.index("Bag") if "Bag" in classes else len(classes) - 1


def _v1(ctx_dir: Path, jpegs: list[bytes], labels: list[int], names: tuple[str, ...], model: str, seed: int) -> Path:
    """The seed model, once per seed for every arm: what `retrain` makes first (the ImageNet
    backbone with a head on the seed labels, or the small CNN), published by each arm's registry."""
    classes = sorted({names[c] for c in labels})
    out = ctx_dir / "v1"
    initial_bundle(out, frames_bgr=[decode(b) for b in jpegs], labels=[classes.index(names[c]) for c in labels],
                   classes=classes, arch=model, spec=DEFAULT_INPUT if model == "small_cnn" else None, name="b1",
                   version=1, label_set={"count": len(labels)}, workdir=ctx_dir / "v1-work",
                   config=TrainConfig(seed=seed) if model == "small_cnn" else None)
    return out


def _holdout(root: Path, data, scenario, frame_size: int) -> Path:
    """--gate: 20 unused images per seed class, the gate's fixed held-out set (not counted as labels)."""
    rng = np.random.default_rng([scenario.seed, 77])
    used = set(int(i) for i in scenario.seed_indices) | {it.index_in_dataset for rs in scenario.rounds for s in rs
                                                         for it in s.items}
    for c, name in enumerate(data.labels):
        if c == scenario.novel:
            continue
        free = np.setdiff1d(np.flatnonzero(data.train.labels == c), list(used))
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in rng.choice(free, min(HOLDOUT_PER_CLASS, len(free)), replace=False):
            (root / name / f"{i}.jpg").write_bytes(jpeg(render_clean(data.train.images[i], frame_size), 95))
    return root


def run_seed(seed: int, args, data, sizes: Sizes, arms, evaluator: Evaluator, novel: int, work: Path) -> dict:
    started = time.monotonic()
    scenario = make_scenario(data, sizes, seed, novel, clock_ms=int(time.time() * 1000) - 86_400_000)
    seed_dir = work / f"seed-{seed}"
    jpegs, labels = seed_frames(data, scenario, sizes.frame_size)
    write_seed_folder(seed_dir / "seed", data, jpegs, labels, scenario.seed_indices)
    v1 = _v1(seed_dir, jpegs, labels, data.labels, args.model, seed)
    evaluator.embeddings(v1)
    ctx = SeedContext(data, sizes, scenario, args.model, seed_dir, seed_dir / "seed", jpegs, labels, v1, evaluator,
                      _holdout(seed_dir / "holdout", data, scenario, sizes.frame_size) if args.gate else None)
    runs: dict[str, list[dict]] = {}
    noise = None
    for arm in arms:
        if arm.streams:
            t = time.monotonic()
            runs[arm.key], labeled = run_stream_arm(arm, ctx)
            if arm.key == "1_random" and args.noise_seeds > 1:
                noise = training_noise(ctx, labeled, seeds=args.noise_seeds)
            print(f"  seed {seed} {arm.key}: final accuracy {runs[arm.key][-1]['accuracy']:.4f} with "
                  f"{runs[arm.key][-1]['labels']} labels ({time.monotonic() - t:.0f} s)", flush=True)
    pool_arms = [a for a in arms if not a.streams]
    total_frames = sum(s.n_frames for rs in scenario.rounds for s in rs)
    if pool_arms:
        t = time.monotonic()
        frames = collect_frames(ctx)
        total_bytes = int(frames.jpeg_bytes[frames.round >= 1].sum())
        every = args.all_labeled_every_round or total_frames <= 10_000
        runs.update(run_pool_arms(pool_arms, ctx, frames, None if every else {sizes.novel_round, sizes.rounds}))
        print(f"  seed {seed} pool arms: " + ", ".join(f"{a.key} {runs[a.key][-1]['accuracy']:.4f}" for a in pool_arms)
              + f" ({time.monotonic() - t:.0f} s)", flush=True)
    else:
        total_bytes = sum(len(jpeg(f, UPLOAD_JPEG_QUALITY)) for rs in scenario.rounds for s in rs
                          for f in render_stream(data, s, sizes.frame_size))
    shutil.rmtree(seed_dir, ignore_errors=True)
    return {"seed": seed, "runs": runs, "training_noise": noise, "all_frames": total_frames,
            "all_frames_jpeg_bytes": total_bytes, "seed_labels": len(labels),
            "seconds": round(time.monotonic() - started)}


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run (1 seed, 3 rounds, 3 cameras): under ~3 minutes")
    p.add_argument("--dataset", type=Path, default=None,
                   help="ImageFolder root (root/<class>/<image>, or root/train + root/test); default Fashion-MNIST")
    p.add_argument("--seeds", type=int, help="seeds (full: 3, quick: 1)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--devices", type=int, help="cameras in all; the last joins mid-way (full: 4)")
    p.add_argument("--items", type=int, help="dataset items per camera per round (full: 150)")
    p.add_argument("--select", type=int, help="labels bought per round (full: 50)")
    p.add_argument("--test-size", type=int, help="test images accuracy is measured on (0 = all)")
    p.add_argument("--upload-fraction", type=float, default=Sizes.upload_fraction,
                   help="upload budget: share of frames a camera may upload (default %(default)s)")
    p.add_argument("--novel-round", type=int, default=2, help="round in which the held-back class appears")
    p.add_argument("--novel-class", default="", help="class held back (default Bag, else the last class)")
    p.add_argument("--model", choices=("mobilenet_v2", "small_cnn"), default="mobilenet_v2")
    p.add_argument("--arms", default="all", help=f"comma list of arms (default all of 1-7); also: {', '.join(ARMS)}")
    p.add_argument("--gate", action="store_true", help="retrain behind the evaluation gate (own held-out set)")
    p.add_argument("--noise-seeds", type=int, default=5, help="training seeds for the noise check (1 = skip)")
    p.add_argument("--all-labeled-every-round", action="store_true",
                   help="train arm 7 every round (default: only in the novel class's round and the last one when "
                        "more than 10k frames, since each costs minutes)")
    p.add_argument("--image-size", type=int, default=64, help="ImageFolder images are resized to this square")
    p.add_argument("--frame-size", type=int, default=56)
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.devices < 1 or args.rounds < 1 or args.items < 1 or args.select < 1 or args.seeds < 1:
        p.error("--devices, --rounds, --items, --select and --seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.monotonic()
    arms = resolve_arms(args.arms)
    data = load_data(args.dataset, image_size=args.image_size)
    novel = data.classes.index(args.novel_class) if args.novel_class else _default_novel(data.classes)
    sizes = Sizes(devices=args.devices, rounds=args.rounds, items=args.items, select=args.select,
                  upload_fraction=args.upload_fraction, frame_size=args.frame_size,
                  novel_round=min(args.novel_round, args.rounds))
    frames, labels = eval_frames(data, args.test_size, sizes.frame_size)
    evaluator = Evaluator(frames, labels, data.labels)
    print(f"B1 on {data.name}: {len(data.train)} train / {len(frames)} test images, "
          f"arms {', '.join(a.key for a in arms)}", flush=True)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="b1-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            per_seed.append(run_seed(seed, args, data, sizes, arms, evaluator, novel, Path(tmp)))
    runs = {a.key: [s["runs"][a.key] for s in per_seed] for a in arms}
    total_bytes = [s["all_frames_jpeg_bytes"] for s in per_seed]
    result = {
        "benchmark": "B1 flywheel vs random",
        "command": "python -m benchmarks.flywheel " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                         else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.monotonic() - started),
        "config": {"dataset": data.name, "model": args.model, "seeds": args.seeds, "first_seed": args.first_seed,
                   **asdict(sizes), "join_round": sizes.joins_at, "novel_class": data.classes[novel],
                   "test_size": len(frames), "gate": args.gate, "classes": list(data.labels)},
        "arms": {a.key: {"title": a.title, "streams_through_agents": a.streams,
                         "note": "" if a.streams else POOL_NOTE} for a in arms},
        "headline": headline(runs, seed_labels=per_seed[0]["seed_labels"], total_jpeg_bytes=total_bytes,
                             novel_round=sizes.novel_round),
        "arms_summary": arm_summary(runs, total_bytes),
        "training_noise": per_seed[0]["training_noise"],
        "training_noise_per_seed": [s["training_noise"] for s in per_seed],
        "seeds": [{k: v for k, v in s.items() if k not in ("runs", "training_noise")} for s in per_seed],
        "runs": runs,
        "evaluation_fallbacks": evaluator.full_runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flywheel.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot(runs, {a.key: a.title for a in arms}, args.out / "flywheel.png")
    (args.out / "flywheel.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
