"""Progress on stderr for the batch commands."""

import sys
import time


class ProgressBar:
    """A one-line progress report on stderr: count, rate and time left."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()

    def show(self, done: int, total: int, failed: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        filled = int((done / total if total else 1.0) * 30)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
            f"{done}/{total} {rate:.1f}/s ETA {left:.0f}s failed {failed}"
        )
        sys.stderr.flush()
