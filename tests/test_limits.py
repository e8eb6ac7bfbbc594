"""The token bucket, the upload queue and the key cache, on a clock the test moves."""

from app.api.access import Caller, KeyCache
from app.core.limits import MAX_RETRY_AFTER_SECONDS, TokenBucket, UploadQueue, retry_after


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3)

    at_once = [bucket.take(now=10.0) for _ in range(4)]
    later = [bucket.take(now=10.25), bucket.take(now=10.5), bucket.take(now=10.5)]

    assert at_once == [0.0, 0.0, 0.0, 0.5]  # three saved up; the next is half a second away
    assert later == [0.25, 0.0, 0.5]
    # A long pause saves up no more than the burst.
    assert [bucket.take(now=100.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_retry_after_is_whole_seconds_within_bounds() -> None:
    assert [retry_after(s) for s in (0.0, 0.2, 1.0, 1.01, 59.5, 3600.0)] == [
        1,
        1,
        1,
        2,
        60,
        MAX_RETRY_AFTER_SECONDS,
    ]


def test_the_queue_admits_slots_plus_limit_and_suggests_the_recent_duration() -> None:
    queue = UploadQueue(slots=2, limit=1)

    admitted = [queue.try_enter() for _ in range(4)]
    suggested_before_any_finished = queue.retry_after()
    queue.leave(seconds=4.0)
    readmitted = queue.try_enter()
    queue.leave(seconds=9.0)

    assert admitted == [True, True, True, False]
    assert suggested_before_any_finished == 1
    assert readmitted is True
    assert queue.in_progress == 2
    assert queue.retry_after() == 5  # 4 + 0.2 * (9 - 4) = 5.0 seconds


def test_the_key_cache_forgets_after_its_time_and_stays_bounded() -> None:
    cache = KeyCache(seconds=5.0, size=2)
    reader = Caller("reader", "read")
    cache.put("a", reader, now=0.0)
    cache.put("unknown", None, now=0.0)

    assert cache.get("a", now=4.9) == (True, reader)
    assert cache.get("unknown", now=4.9) == (True, None)  # unknown digests are remembered too
    assert cache.get("a", now=5.0) == (False, None)
    cache.put("b", reader, now=6.0)  # a third entry: the cache starts afresh
    assert cache.get("unknown", now=6.0) == (False, None)
    assert cache.get("b", now=6.0) == (True, reader)


def test_a_cache_of_zero_seconds_remembers_nothing() -> None:
    cache = KeyCache(seconds=0.0)
    cache.put("a", Caller("reader", "read"), now=0.0)

    assert cache.get("a", now=0.0) == (False, None)
