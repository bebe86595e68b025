"""How `radio-vlm demo` runs the other packages' commands: subprocesses, their progress on the console.

radio_vlm imports neither `distill` nor `llava_patch`, so each stage runs as `python -m distill ...` or
`python -m llava_patch.cli ...`, exactly as a user would type it. Each stage's whole output goes to
`DIR/logs/<stage>.log`; the console gets every line, prefixed with the stage's name, and tqdm's in-place
updates (carriage returns) at most every few seconds, so two stages running side by side stay readable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

# tqdm redraws a bar several times a second; the console shows one redraw per stage per this many seconds
REDRAW_EVERY_S = 5.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The blind baseline's images: every pixel this grey (about the CLIP mean colour the processor pads with)
BLANK_RGB = (124, 116, 104)


class StageFailed(RuntimeError):
    """A stage's command exited with an error; the message names the stage, its log and the command."""


@dataclass
class Stage:
    """One command of the demo. `argv` starts with the module to run (`-m distill ...`)."""

    name: str
    argv: list[str]
    log: Path
    seconds: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        return [sys.executable, *self.argv]


def _pump(process: subprocess.Popen, stage: Stage, console_lock: threading.Lock) -> None:
    """Copy the process's output to its log file, and line by line (throttled redraws) to the console."""
    last_redraw = 0.0
    pending = b""
    with stage.log.open("wb") as log:
        while chunk := process.stdout.read1(4096):
            log.write(chunk)
            log.flush()
            pending += chunk
            *segments, pending = _split_keep(pending)
            for text, ends_with_newline in segments:
                now = time.monotonic()
                if not text.strip() or (not ends_with_newline and now - last_redraw < REDRAW_EVERY_S):
                    continue
                if not ends_with_newline:
                    last_redraw = now
                with console_lock:
                    print(f"[{stage.name}] {text.decode(errors='replace').rstrip()}", flush=True)
        if pending.strip():
            with console_lock:
                print(f"[{stage.name}] {pending.decode(errors='replace').rstrip()}", flush=True)


def _split_keep(data: bytes) -> list:
    """b"a\\rb\\nc" -> [(b"a", False), (b"b", True), b"c"]: segments ended by \\r or \\n, then the rest."""
    out, start = [], 0
    for i, byte in enumerate(data):
        if byte in (10, 13):  # \n, \r
            out.append((data[start:i], byte == 10))
            start = i + 1
    out.append(data[start:])
    return out


def run_stages(stages: list[Stage], threads_each: int | None = None) -> None:
    """Run `stages` at the same time (one list = one wave) and wait for all; raise StageFailed if one fails.

    `threads_each` sets OMP_NUM_THREADS / torch threads of each process (default: the CPUs divided by
    the number of stages), so stages side by side do not oversubscribe the cores.
    """
    threads = threads_each or max(1, (os.cpu_count() or 1) // len(stages))
    lock = threading.Lock()
    running = []
    for stage in stages:
        stage.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **stage.env}
        with lock:
            print(f"[{stage.name}] $ {' '.join(['python', *stage.argv])}", flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(stage.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        pump = threading.Thread(target=_pump, args=(process, stage, lock), daemon=True)
        pump.start()
        running.append((stage, process, pump, start))
    failed = []
    for stage, process, pump, start in running:
        code = process.wait()
        pump.join()
        stage.seconds = time.perf_counter() - start
        if code != 0:
            failed.append(
                f"{stage.name} (exit {code}; log {stage.log}; command: python {' '.join(stage.argv)})"
            )
    if failed:
        raise StageFailed("demo stage failed: " + "; ".join(failed))


def blank_images(source: Path, target: Path) -> int:
    """Copy the image tree under `source` to `target` with every image replaced by a uniform grey one of
    the same size (same names, same token counts: only the content is gone). Returns the images written."""
    count = 0
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            Image.new("RGB", image.size, BLANK_RGB).save(out)
        count += 1
    return count
