"""Progress and cancellation for a conversion: a count of steps (calibration
samples, then each rank's tensor groups), a `progress(fraction, message)`
callback and a `check()` that raises `Cancelled` -- what the job worker's
context offers (ctx.progress, ctx.checkpoint), or nothing for a plain call."""

from typing import Callable

Progress = Callable[[float, str], None]
Check = Callable[[], None]


class Reporter:
    def __init__(self, total_steps: int, progress: Progress | None = None, check: Check | None = None):
        self.total, self.done = max(total_steps, 1), 0
        self._progress, self._check = progress, check

    def step(self, message: str) -> None:
        """One step done: report, then stop here if cancelled."""
        self.done += 1
        if self._progress is not None:
            self._progress(min(self.done / self.total, 1.0), message)
        self.check()

    def publish(self) -> None:
        """The last report before an artifact is renamed into place. In a job it goes
        to the store at once: a worker whose lease is gone, or whose job was
        cancelled, stops here rather than publish over another worker's output."""
        if self._progress is not None:
            self._progress(1.0, "publishing")
        self.check()

    def check(self) -> None:
        if self._check is not None:
            self._check()
