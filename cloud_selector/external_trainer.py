"""The external trainer hook: run the user's own training command, check the ONNX it writes.

The command is an argv list, run without a shell, in a fresh process group, with the
environment of this process plus:

    EDGEFLYWHEEL_DATASET      the labeled set, exported for it:
                                images/000000.png ...   the frames as PNG (BGR frames -> true colours)
                                labels.csv              header `file,label`; file relative to the
                                                        dataset dir, label a class name
                                classes.txt             one class name a line; line i = class index i
    EDGEFLYWHEEL_OUTPUT       the path it must write its ONNX model to (does not exist yet)
    EDGEFLYWHEEL_NUM_CLASSES  len(classes.txt)
    EDGEFLYWHEEL_INPUT_SPEC   JSON of the InputSpec the model's input must follow (the device
                              preprocesses frames with it: size, colour order, mean/std, layout)

and the placeholders {dataset}, {output}, {num_classes} replaced in its arguments. Its working
directory is the dataset directory; stdout and stderr go to files beside it.

The model must take the preprocessed batch as `input` [N, ...] and give `logits` [N, C] and
`embedding` [N, D] (other names through `input_name` / `outputs`). It then goes through the
checks every bundle does (`onnx_compose.check_model_file`: onnx.checker, names, class count,
ONNX Runtime on real frames) and is saved as one self-contained model.onnx.

Errors: `ExternalTrainerError` when the command cannot start, exits non-zero (the message
carries the tail of its stderr) or writes no model; `ExternalTrainerTimeout` (a subclass) when
it runs past `timeout_s`, after its whole process group is killed; `onnx_compose.ExportError`
when the model it wrote fails a check (a wrong class count included).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from cloud_selector.onnx_compose import (
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAMES,
    ExportError,
    check_model_file,
    load_model,
    ort_session,
    run_model,
    sample_indices,
)
from edge_agent.bundle import InputSpec
from edge_agent.preprocess import preprocess

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000


class ExternalTrainerError(Exception):
    """The external training command failed to produce a model."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class ExternalTrainerTimeout(ExternalTrainerError):
    """The external training command ran past its timeout and was killed."""


@dataclass
class ExternalResult:
    model_path: Path  # the checked, self-contained model.onnx
    embeddings: np.ndarray  # the labeled frames through it, float32 [N, D]
    seconds: float  # the command's wall time


def export_labeled_set(directory: Path, frames_bgr: Sequence[np.ndarray], labels: Sequence[int],
                       classes: Sequence[str]) -> Path:
    """Write images/*.png, labels.csv and classes.txt into `directory` (created)."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=False)
    if any("\n" in c or "\r" in c for c in classes):
        raise ExternalTrainerError("class names with line breaks cannot be written to classes.txt")
    (directory / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    with open(directory / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for i, (frame, label) in enumerate(zip(frames_bgr, labels)):
            rel = f"images/{i:06d}.png"
            if not cv2.imwrite(str(directory / rel), np.asarray(frame)):
                raise ExternalTrainerError(f"cannot write frame {i} as PNG (shape {np.shape(frame)})")
            writer.writerow([rel, classes[int(label)]])
    return directory


def run_command(command: Sequence[str], *, dataset: Path, output: Path, num_classes: int, spec: InputSpec,
                timeout_s: float, log_dir: Path) -> float:
    """Run the command as documented above; returns its wall time in seconds."""
    values = {"dataset": str(dataset), "output": str(output), "num_classes": str(num_classes)}
    try:
        argv = [str(arg).format(**values) for arg in command]
    except (KeyError, IndexError, ValueError) as exc:
        raise ExternalTrainerError(f"bad placeholder in the external command {list(command)}: {exc!r}; "
                                   "use {dataset}, {output}, {num_classes} ({{ }} for literal braces)") from exc
    env = {**os.environ, "EDGEFLYWHEEL_DATASET": values["dataset"], "EDGEFLYWHEEL_OUTPUT": values["output"],
           "EDGEFLYWHEEL_NUM_CLASSES": values["num_classes"], "EDGEFLYWHEEL_INPUT_SPEC": json.dumps(asdict(spec))}
    stdout_path, stderr_path = log_dir / "stdout.log", log_dir / "stderr.log"
    started = time.perf_counter()
    # Output to files, not pipes: a chatty trainer can neither fill a pipe and hang nor fill
    # our memory, and the files stay for whoever debugs it.
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, cwd=dataset, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)  # its own process group: a timeout kills it all
        except OSError as exc:
            raise ExternalTrainerError(f"cannot start the external trainer {argv[0]!r}: {exc}") from exc
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.killpg(proc.pid, signal.SIGKILL)  # the group we created for it, workers included
            proc.wait()
            raise ExternalTrainerTimeout(f"the external trainer ran past its {timeout_s:g} s timeout and was killed",
                                         stderr_tail=_tail(stderr_path)) from None
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = _tail(stderr_path)
        raise ExternalTrainerError(f"the external trainer exited with status {returncode}; its stderr ends:\n{tail}",
                                   returncode=returncode, stderr_tail=tail)
    if not output.is_file() or output.stat().st_size == 0:
        raise ExternalTrainerError(f"the external trainer exited 0 but wrote no model at {output}",
                                   returncode=0, stderr_tail=_tail(stderr_path))
    return seconds


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - STDERR_TAIL_CHARS))
        return f.read().decode("utf-8", errors="replace").strip()


def train_external(command: Sequence[str], frames_bgr: Sequence[np.ndarray], labels: Sequence[int],
                   classes: Sequence[str], spec: InputSpec, workdir: Path, *, timeout_s: float = 3600.0,
                   input_name: str = INPUT_NAME, outputs: tuple[str, str] = OUTPUT_NAMES) -> ExternalResult:
    """Export the labeled set, run `command`, check its model and embed the frames with it.
    `workdir` is created and must not exist."""
    if not command:
        raise ExternalTrainerError("no external command given")
    workdir = Path(workdir)
    if workdir.exists():  # a stale export or model from another run must not be mistaken for this one's
        raise ExternalTrainerError(f"the external trainer's work directory {workdir} already exists")
    dataset = export_labeled_set(workdir / "dataset", frames_bgr, labels, classes)
    produced = workdir / "output" / "model.onnx"
    produced.parent.mkdir()
    seconds = run_command(command, dataset=dataset, output=produced, num_classes=len(classes), spec=spec,
                          timeout_s=timeout_s, log_dir=workdir)
    # One self-contained file in a directory of its own, whatever external data it used.
    model_path = workdir / "model" / MODEL_FILE
    model_path.parent.mkdir()
    try:
        onnx.save(load_model(produced), str(model_path))
    except ValueError as exc:  # over protobuf's 2 GB: not a model for a device anyway
        raise ExportError(f"cannot save the external model as one file: {exc}") from exc
    sample = preprocess([frames_bgr[i] for i in sample_indices(len(frames_bgr))], spec)
    check_model_file(model_path, sample, num_classes=len(classes),
                     input_name=input_name, outputs=outputs)
    (embeddings,) = run_model(ort_session(model_path), spec, frames_bgr, input_name, [outputs[1]])
    log.info("external trainer: %d frames, %.1f s, model %d bytes", len(frames_bgr), seconds,
             model_path.stat().st_size)
    return ExternalResult(model_path=model_path, embeddings=embeddings, seconds=seconds)
