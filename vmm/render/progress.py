"""Rendering of `vmm pull`: a rich progress bar on a terminal, plain periodic lines otherwise.

Kept apart from render.py so the pull branch merges cleanly; it follows the same rule:
progress and notes go to stderr, stdout holds only the result.
"""

from __future__ import annotations

import sys
import threading
import time

from vmm import render


class PullProgress:
    """A callable for ``download_model_to_path(progress=...)``; thread-safe."""

    def __init__(self, name: str, interval_s: float = 2.0, quiet: bool = False) -> None:
        self.name = name
        self.interval_s = interval_s
        self.quiet = quiet
        self.lock = threading.Lock()
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.task = None
        self.last_line = 0.0
        self.started = time.monotonic()
        self.first_done: int | None = None

    def __enter__(self) -> PullProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    def _start_bar(self, total: int) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=render.err(),
                            transient=False)
        self.bar.start()
        self.task = self.bar.add_task(self.name, total=total)

    def __call__(self, update) -> None:
        with self.lock:
            if update.message:
                if self.bar is not None:
                    self.bar.console.print(update.message)
                elif not self.quiet or "waiting" in update.message:
                    render.note(update.message)
                return
            if self.quiet or update.bytes_total <= 0:
                return
            if self.first_done is None:
                self.first_done = update.bytes_done
            if self.tty:
                if self.bar is None:
                    self._start_bar(update.bytes_total)
                self.bar.update(self.task, completed=update.bytes_done, total=update.bytes_total,
                                description=f"{self.name} {update.files_done}/{update.files_total} files")
                return
            now = time.monotonic()
            if update.finished or now - self.last_line >= self.interval_s:
                self.last_line = now
                elapsed = max(1e-6, now - self.started)
                speed = update.bytes_downloaded / elapsed
                pct = 100.0 * update.bytes_done / update.bytes_total
                render.note(f"pull {self.name}: {pct:5.1f}% {render.human_bytes(update.bytes_done)}"
                            f"/{render.human_bytes(update.bytes_total)} "
                            f"{update.files_done}/{update.files_total} files "
                            f"{render.human_bytes(speed)}/s")
