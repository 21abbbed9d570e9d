"""`edgeflywheel-demo` (`make demo`): the whole flywheel on Fashion-MNIST, end to end."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flywheel_demo.datasets import FASHION_MNIST_DIR, DatasetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgeflywheel-demo",
        description="Run the flywheel end to end: train model v1 on a small labeled seed of Fashion-MNIST (some "
                    "classes held out), simulate cameras as video files, start cloud-selector and one edge-agent "
                    "process per camera, then for each round stream -> upload -> select -> label (oracle) -> "
                    "retrain -> hot-swap, printing a table per round and writing <out>/report.json.")
    parser.add_argument("--devices", type=int, default=3, help="simulated cameras (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="flywheel rounds (default 3)")
    default_data = Path(os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    parser.add_argument("--data-dir", type=Path, default=default_data,
                        help=f"Fashion-MNIST IDX directory (default $FASHION_MNIST_DIR or {FASHION_MNIST_DIR})")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="output directory, replaced if it holds an earlier demo (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select", type=int, default=50, help="labels bought per round (default 50)")
    parser.add_argument("--items", type=int, default=150, help="items each camera sees per round (default 150)")
    parser.add_argument("--model", choices=["mobilenet_v2", "small_cnn"], default="mobilenet_v2",
                        help="mobilenet_v2 (default): ImageNet backbone frozen, a new head each round (devices fetch "
                             "only the head); small_cnn: trained from scratch each round")
    parser.add_argument("--no-serve", action="store_true",
                        help="exit at the end instead of serving the demo's dashboard until Ctrl-C")
    parser.add_argument("--dashboard-port", type=int, default=8080,
                        help="the dashboard's port on 127.0.0.1 at the end (default 8080; 0 = any free port)")
    parser.add_argument("--test-size", type=int, default=10_000,
                        help="test images the accuracy is measured on (default all 10000)")
    args = parser.parse_args(argv)
    if min(args.devices, args.rounds, args.select, args.items, args.test_size) < 1:
        parser.error("--devices, --rounds, --select, --items and --test-size must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import shutil

    from flywheel_demo.processes import ProcessError
    from flywheel_demo.run import Demo, DemoConfig

    if args.out.exists():
        if not (args.out / "report.json").exists() and not (args.out / "cloud").exists() and any(args.out.iterdir()):
            parser.error(f"{args.out} exists and is not an earlier demo output; choose another --out")
        shutil.rmtree(args.out)
    config = DemoConfig(devices=args.devices, rounds=args.rounds, data_dir=args.data_dir, out=args.out,
                        seed=args.seed, select_per_round=args.select, items_per_round=args.items,
                        model=args.model, test_size=args.test_size)
    try:
        report = Demo(config).run()
    except (DatasetError, ProcessError) as exc:
        print(f"edgeflywheel-demo: error: {exc}", file=sys.stderr)
        return 2
    last = report["rounds"][-1]
    print(f"\naccuracy: v{report['initial_model_version']} {report['initial_accuracy']:.3f} -> "
          f"v{last['model_version']} {last['accuracy']:.3f} after {len(report['rounds'])} rounds, "
          f"{last['labels_total']} labels; report: {args.out / 'report.json'} ({report['wall_seconds']}s)")
    if args.no_serve:
        return 0
    from cloud_selector.dashboard.server import DashboardConfigError
    from flywheel_demo.dashboard import serve_until_interrupted

    try:
        return serve_until_interrupted(args.out / "cloud", args.dashboard_port)
    except (OSError, DashboardConfigError) as exc:
        print(f"edgeflywheel-demo: error: cannot serve the dashboard on port {args.dashboard_port}: {exc} "
              "(try --dashboard-port 0)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
