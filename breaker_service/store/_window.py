"""A time-bucketed sliding window with running totals (the in-process twin of the Lua ring).

``size`` buckets of ``bucket_ms`` each form a ring. ``head`` is the index (``now // bucket_ms``)
of the newest bucket; moving ``head`` forward subtracts and clears each bucket that falls out of
the window, so every call costs O(1) amortised (at most ``size`` buckets per move) and memory is
constant whatever the call rate.
"""

from __future__ import annotations


class SlidingWindow:
    """Calls, failures and slow calls seen in the last ``bucket_ms * size`` milliseconds."""

    __slots__ = ("_c", "_f", "_head", "_s", "bucket_ms", "calls", "failures", "size", "slow")

    def __init__(self, bucket_ms: int, size: int, now_ms: int) -> None:
        self.bucket_ms = bucket_ms
        self.size = size
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self._c = [0] * size
        self._f = [0] * size
        self._s = [0] * size
        self._head = now_ms // bucket_ms

    def fits(self, bucket_ms: int, size: int) -> bool:
        """True when this window was built for the given bucket length and count."""
        return self.bucket_ms == bucket_ms and self.size == size

    def advance(self, now_ms: int) -> None:
        """Drop the buckets that fell out of the window at ``now_ms`` (never earlier)."""
        idx = now_ms // self.bucket_ms
        gap = idx - self._head
        if gap <= 0:
            return
        if gap >= self.size:
            self.clear(now_ms)
            return
        for k in range(self._head + 1, idx + 1):
            slot = k % self.size
            self.calls -= self._c[slot]
            self.failures -= self._f[slot]
            self.slow -= self._s[slot]
            self._c[slot] = self._f[slot] = self._s[slot] = 0
        self._head = idx

    def add(self, now_ms: int, *, failed: bool, slow: bool) -> None:
        """Count one call at ``now_ms``."""
        self.advance(now_ms)
        slot = self._head % self.size
        self._c[slot] += 1
        self.calls += 1
        if failed:
            self._f[slot] += 1
            self.failures += 1
        if slow:
            self._s[slot] += 1
            self.slow += 1

    def add_successes(self, now_ms: int, calls: int, slow: int) -> None:
        """Count ``calls`` successful calls at ``now_ms``, ``slow`` of them slow."""
        if calls <= 0:
            return
        self.advance(now_ms)
        slot = self._head % self.size
        self._c[slot] += calls
        self.calls += calls
        self._s[slot] += slow
        self.slow += slow

    def clear(self, now_ms: int) -> None:
        """Start a fresh, empty window at ``now_ms``."""
        for ring in (self._c, self._f, self._s):
            ring[:] = [0] * self.size
        self.calls = self.failures = self.slow = 0
        self._head = max(self._head, now_ms // self.bucket_ms)
