"""Progress of the batch commands on stderr, drawn by tqdm: count, rate and time left on a
terminal, and nothing at all when stderr is redirected (no redraws in a log file)."""

import sys

from tqdm import tqdm


class Progress:
    """One bar for a batch command; `show` moves it to `done` of `total`."""

    def __init__(self, label: str, unit: str) -> None:
        # disable=None: tqdm draws only when stderr is a terminal.
        self._bar = tqdm(desc=label, unit=f" {unit}", file=sys.stderr, disable=None, leave=True)

    def show(self, done: int, total: int, failed: int) -> None:
        self._bar.total = total
        self._bar.set_postfix_str(f"{failed} failed", refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()
