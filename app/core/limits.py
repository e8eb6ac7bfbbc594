"""How much: a token bucket per API key, and the bounded queue of uploads waiting to be decoded.

Both live in one server process (each worker process, each replica has its own) and are
driven by the caller's clock (`time.monotonic()` seconds), which keeps them pure.
"""

import math
from dataclasses import dataclass, field

# Retry-After is whole seconds (RFC 9110, delta-seconds); a refusal never asks for more than this.
MAX_RETRY_AFTER_SECONDS = 60


def retry_after(seconds: float) -> int:
    """Seconds for a Retry-After header: rounded up, 1 to MAX_RETRY_AFTER_SECONDS."""
    return min(MAX_RETRY_AFTER_SECONDS, max(1, math.ceil(seconds)))


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `capacity` saved up; a request takes one.

    The standard token bucket (as in RFC 2697's committed burst): a key may make `capacity`
    requests at once, then `rate` a second."""

    rate: float  # tokens per second, > 0
    capacity: int  # >= 1
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be one."""
        if self.updated is not None:
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(float(self.capacity), self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class UploadQueue:
    """Admission for requests that decode an image: at most `slots` decoding (IMAGE_WORKERS) and
    `limit` waiting (UPLOAD_QUEUE_LIMIT) at once; a request beyond that is refused, not queued.

    A request holds its place from admission (before its body is read) until its response has
    gone out, so the bound covers everything an upload holds: its body, its wait and its
    decode. The Retry-After it suggests is how long an admitted request has been taking (an
    exponentially weighted mean of recent durations): by then the requests now in progress
    have drained."""

    SMOOTHING = 0.2  # weight of the newest duration in the mean

    def __init__(self, *, slots: int, limit: int) -> None:
        self.capacity = slots + limit
        self.in_progress = 0
        self.mean_seconds = 0.0

    def try_enter(self) -> bool:
        if self.in_progress >= self.capacity:
            return False
        self.in_progress += 1
        return True

    def leave(self, seconds: float) -> None:
        """A request admitted earlier is done, after `seconds`."""
        self.in_progress -= 1
        if self.mean_seconds == 0.0:
            self.mean_seconds = seconds
        else:
            self.mean_seconds += self.SMOOTHING * (seconds - self.mean_seconds)

    def retry_after(self) -> int:
        """Whole seconds until the requests in progress have likely drained (at least 1)."""
        return retry_after(self.mean_seconds)
