"""RedisStore: breaker state shared by the whole fleet, in Redis hashes moved by Lua scripts.

One hash per scope, ``<ns>:cb:{<provider>}:p`` or ``<ns>:cb:{<provider>}:m:<model>``: the
provider is the Cluster hash tag, so one call's keys share a slot. Fields:

=======================  ===============================================================
``st`` ``g``             state and generation
``ou`` ``oa`` ``op``     open until / opened at (Redis ms) and the open period (ms)
``tr``                   trips since the last close (drives the backoff)
``ln``                   last Redis time seen: time never goes back for this scope
``cf``                   consecutive failures
``fs``                   failure sequence number: +1 per failure that raised ``cf``, never
                         lowered; grants carry it (a success admitted before it is stale)
``ps`` ``ls`` ``tk``     half-open probe successes, live leases ``tok:expiry,...`` (at most
                         ``half_open_max_probes``; expired ones dropped on access), token counter
``sl``                   suspect leases ``tok:expiry,...`` (closed with ``cf`` >= 1; fewer than
                         ``consecutive_failures``; emptied by a success or a transition)
``wb`` ``wn`` ``hd``     window bucket length, bucket count, index of the newest bucket
``C`` ``F`` ``S``        running totals of calls, failures and slow calls in the window
``b<i>c/f/s``            the ring: calls, failures, slow calls of bucket ``i``
=======================  ===============================================================

The field count is bounded by ``19 + 3 * buckets`` whatever the call rate. Each of
:meth:`~RedisStore.acquire`, :meth:`~RedisStore.record`, :meth:`~RedisStore.control` is one
script call (one round trip); writes PEXPIRE the key with ``policy.ttl_ms()``, except in the
sticky states (forced_open, forced_closed, disabled, credential-open), which are PERSISTed so
they never lapse back to closed on their own. :meth:`~RedisStore.snapshot` is one MULTI/EXEC
of ``TIME`` and ``HGETALL``. Every ``redis.RedisError`` becomes
:class:`~breaker_service.errors.StoreUnavailable`.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Sequence
from importlib import resources
from typing import Any, NoReturn, cast

import redis
from redis.commands.core import Script

from breaker_service.errors import PolicyError, StoreUnavailable
from breaker_service.outcomes import Outcome
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.base import (
    AcquireResult,
    BreakerStore,
    ControlAction,
    RecordItem,
    ScopeGrant,
    ScopeSnapshot,
    State,
    Transition,
    Trigger,
    check_aggregate,
    check_control_action,
    clamp_jitter,
)

log = logging.getLogger(__name__)

_POLICY_STRUCT = struct.Struct(">16d")  # the scripts' POLICY format: keep them in step


def _lua(name: str) -> str:
    return resources.files("breaker_service.store").joinpath("lua", name).read_text("utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=1024)
def policy_arg(policy: BreakerPolicy) -> bytes:
    """The policy as the scripts read it: 16 big-endian doubles (order in acquire.lua; the
    last is ``suspect_cap`` as 1.0 or 0.0).

    Cached per policy (policies are frozen): a call passes one argument per scope. Lua's
    ``struct.unpack`` reads it about 10x faster than ``cjson.decode`` reads the same numbers
    as JSON (which cost ~4 us of server time per scope and script call).
    """
    numbers: list[float] = [
        policy.bucket_ms,
        policy.buckets,
        policy.failure_rate_threshold,
        policy.minimum_calls,
        policy.slow_call_ms,
        policy.slow_call_rate_threshold,
        policy.consecutive_failures,
        policy.half_open_max_probes,
        policy.half_open_successes,
        policy.probe_lease_ms,
        policy.open_base_ms,
        policy.backoff_factor,
        policy.open_cap_ms,
        policy.jitter_ratio,
        policy.ttl_ms(),
        1.0 if policy.suspect_cap else 0.0,
    ]
    return _POLICY_STRUCT.pack(*numbers)


def _live_totals(f: dict[str, str], now: int) -> tuple[int, int, int]:
    """Window totals at ``now``: the stored totals minus buckets that expired since ``hd``."""
    if "hd" not in f or "wb" not in f or "wn" not in f:
        return 0, 0, 0
    head, bucket_ms, n = int(f["hd"]), int(f["wb"]), int(f["wn"])
    calls, fails, slow = int(f.get("C", 0)), int(f.get("F", 0)), int(f.get("S", 0))
    gap = now // bucket_ms - head
    if gap >= n:
        return 0, 0, 0
    for k in range(head + 1, head + max(gap, 0) + 1):
        slot = k % n
        calls -= int(f.get(f"b{slot}c", 0))
        fails -= int(f.get(f"b{slot}f", 0))
        slow -= int(f.get(f"b{slot}s", 0))
    return calls, fails, slow


def _snapshot_from_hash(scope: Scope, f: dict[str, str], clock_ms: int) -> ScopeSnapshot:
    now = max(clock_ms, int(f.get("ln", 0)))
    calls, fails, slow = _live_totals(f, now)
    leases = [p.split(":") for p in f.get("ls", "").split(",") if ":" in p]
    suspect = [p.split(":") for p in f.get("sl", "").split(",") if ":" in p]
    return ScopeSnapshot(
        scope=scope,
        state=cast(State, f.get("st", "closed")),
        generation=int(f.get("g", 0)),
        open_until_ms=int(f["ou"]) if "ou" in f else None,
        trips=int(f.get("tr", 0)),
        calls=calls,
        failures=fails,
        slow_calls=slow,
        failure_rate=fails / calls if calls else 0.0,
        slow_rate=slow / calls if calls else 0.0,
        consecutive_failures=int(f.get("cf", 0)),
        probes_in_flight=sum(1 for _, exp in leases if int(exp) > now),
        probe_successes=int(f.get("ps", 0)),
        now_ms=now,
        suspect_in_flight=sum(1 for _, exp in suspect if int(exp) > now),
        fail_seq=int(f.get("fs", 0)),
    )


def _resp(args: list[bytes | memoryview]) -> bytes:
    """One command in the Redis protocol (RESP array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out += [b"$%d\r\n" % len(arg), bytes(arg), b"\r\n"]
    return b"".join(out)


class _AcquireCall:
    """A packed acquire command for one scope set, and its last reusable answer."""

    __slots__ = ("last", "names", "packed")

    def __init__(self, packed: bytes, names: tuple[Scope, ...]) -> None:
        self.packed = packed
        self.names = names
        self.last: tuple[Any, AcquireResult] | None = None


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any, limit: int = 1024) -> None:
    """``cache[key] = value``, emptying the cache first when it holds ``limit`` entries
    (scope sets come from the registry: the limit is only hit by policies built per call)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


class RedisStore(BreakerStore):
    """Breaker state in Redis, shared by every worker that uses the same ``namespace``.

    ``client`` is a redis-py client with short socket timeouts (``fleet.redis_client.make_redis``);
    the three scripts are registered on it once, here. Time is Redis server time.
    """

    def __init__(self, client: redis.Redis, *, namespace: str) -> None:
        if not namespace or any(c in namespace for c in "{}* \t\n"):
            raise PolicyError(
                f"namespace {namespace!r} is invalid: use a non-empty name without braces, "
                "'*' or spaces (for example 'fleet')"
            )
        self._client = client
        self._ns = namespace
        self._prefix = f"{namespace}:cb:"
        self._keys: dict[Scope, str] = {}
        self._acquire_by_id: dict[Any, tuple[tuple[BreakerPolicy, ...], _AcquireCall]] = {}
        self._acquire_by_value: dict[Any, _AcquireCall] = {}
        self._encoder = client.connection_pool.get_encoder()
        self._acquire = client.register_script(_lua("acquire.lua"))
        self._record = client.register_script(_lua("record.lua"))
        self._control = client.register_script(_lua("control.lua"))

    def key(self, scope: Scope) -> str:
        """The Redis key of ``scope``'s hash (hash tag = provider)."""
        key = self._keys.get(scope)
        if key is None:
            tail = ":p" if scope.model is None else f":m:{scope.model}"
            key = f"{self._prefix}{scope.hash_tag}{tail}"
            if len(self._keys) < 10_000:  # bounded: scopes come from the registry
                self._keys[scope] = key
        return key

    def _scope_of(self, key: str) -> Scope | None:
        rest = key[len(self._prefix) :]
        if not rest.startswith("{") or "}" not in rest:
            return None
        provider, _, tail = rest[1:].partition("}")
        try:
            if tail == ":p":
                return Scope(provider)
            if tail.startswith(":m:"):
                return Scope(provider, tail[3:])
        except ValueError:
            return None
        return None

    def _unavailable(self, op: str, scopes: Sequence[Scope], exc: redis.RedisError) -> NoReturn:
        what = ",".join(map(str, scopes)) or "-"
        log.warning(
            "breaker store unavailable op=%s scope=%s namespace=%s error=%s",
            op,
            what,
            self._ns,
            type(exc).__name__,
        )
        raise StoreUnavailable(
            f"Redis did not answer the breaker {op} for {what} ({type(exc).__name__}: {exc})"
        ) from exc

    @staticmethod
    def _transitions(text: str, scopes: Sequence[Scope]) -> list[Transition]:
        """Decode the scripts' transition rows (format in record.lua's header)."""
        out = []
        for row in text.split(";") if text else ():
            idx, frm, to, trig, thr, val, gen, until, at = row.split(",")
            out.append(
                Transition(
                    scope=scopes[int(idx) - 1],
                    from_state=cast(State, frm),
                    to_state=cast(State, to),
                    trigger=cast(Trigger, trig),
                    threshold=float(thr),
                    value=float(val),
                    generation=int(gen),
                    open_until_ms=None if until == "-1" else int(until),
                    at_ms=int(at),
                )
            )
        return out

    def _packed_acquire(self, scopes: Sequence[tuple[Scope, BreakerPolicy]]) -> _AcquireCall:
        """The acquire command of this scope set, packed once. Looked up by the policies'
        identity first (no hashing of policies on the hot path), then by their value, so a
        ``policy_for`` that builds equal policies afresh on every call still hits."""
        sig = tuple([(s, id(p)) for s, p in scopes])
        hit = self._acquire_by_id.get(sig)
        if hit is not None:
            return hit[1]
        policies = tuple(p for _, p in scopes)
        names = tuple(s for s, _ in scopes)
        args = tuple(policy_arg(p) for p in policies)
        call = self._acquire_by_value.get((names, args))
        if call is None:
            keys = [self.key(s) for s in names]
            packed = self._pack("EVALSHA", self._acquire.sha, len(keys), *keys, *args)
            call = _AcquireCall(packed, names)
            _bounded_put(self._acquire_by_value, (names, args), call)
        # the entry holds the policies, so the ids in its key cannot be reused meanwhile
        _bounded_put(self._acquire_by_id, sig, (policies, call))
        return call

    def _pack(self, *words: str | bytes | int) -> bytes:
        """One command in the Redis protocol, encoded as the client encodes arguments."""
        encode = self._encoder.encode
        return _resp([encode(w) for w in words])  # type: ignore[no-untyped-call]

    def _send_packed(self, packed: bytes, script: Script) -> Any:
        """One request on one pooled connection (acquire and record, the hot paths), without
        redis-py's command machinery (25-45 us of Python per call on our VMs). A NOSCRIPT
        reply loads the script and retries once; a connection that fails to send (stale after
        a Redis restart) is dropped and one fresh connection is tried; a timeout is not
        retried (a hung Redis is the guard's job)."""
        pool = self._client.connection_pool
        reloaded = reconnected = False
        while True:
            conn = pool.get_connection()
            try:
                conn.send_packed_command([packed])  # type: ignore[no-untyped-call]
                return conn.read_response()  # type: ignore[no-untyped-call]
            except redis.exceptions.NoScriptError:
                if reloaded:
                    raise
                reloaded = True
                self._client.script_load(script.script)
            except redis.ConnectionError:
                conn.disconnect()  # type: ignore[no-untyped-call]
                if reconnected:
                    raise
                reconnected = True
            except BaseException:
                # a half-read reply must not reach the next caller
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)

    def acquire(
        self, scopes: Sequence[tuple[Scope, BreakerPolicy]]
    ) -> tuple[AcquireResult, list[Transition]]:
        """See :meth:`BreakerStore.acquire`: one EVALSHA for all scopes."""
        call = self._packed_acquire(scopes)
        names = call.names
        try:
            reply = self._send_packed(call.packed, self._acquire)
        except redis.RedisError as exc:
            self._unavailable("acquire", names, exc)
        last = call.last
        if last is not None and last[0] == reply:
            return last[1], []  # the same grants as last time (closed, same generations)
        parts = _text(reply).split("|")
        if parts[0] == "R":
            _, idx, reason, retry_after = parts
            return AcquireResult(False, (), names[int(idx) - 1], reason, int(retry_after)), []
        _, grants_text, transitions_text = parts
        granted = []
        for scope, item in zip(names, grants_text.split(";"), strict=True):
            gen, token, lease, fs = item.split(",")
            granted.append(ScopeGrant(scope, int(gen), token or None, lease or None, int(fs)))
        result = AcquireResult(True, tuple(granted))
        if not transitions_text and all(
            g.probe_token is None and g.lease_token is None for g in granted
        ):
            call.last = (reply, result)
        return result, self._transitions(transitions_text, names)

    def _record_call(
        self,
        grants: Sequence[tuple[ScopeGrant, BreakerPolicy]],
        outcome: Outcome,
        jitter: float,
        count: int,
        slow: Sequence[int] | None,
    ) -> tuple[list[str], list[str | bytes]]:
        """KEYS and ARGV of one record.lua call (layout in its header)."""
        argv: list[str | bytes] = [
            repr(clamp_jitter(jitter)),
            str(outcome.cls),
            repr(float(outcome.latency_ms)),
            str(int(outcome.retry_after_ms or 0)),
            str(count),
        ]
        for i, (grant, policy) in enumerate(grants):
            argv += [
                str(grant.generation),
                grant.probe_token or "",
                policy_arg(policy),
                "-1" if slow is None else str(slow[i]),
                grant.lease_token or "",
                str(grant.fail_seq),
            ]
        return [self.key(g.scope) for g, _ in grants], argv

    def record(
        self,
        grants: Sequence[tuple[ScopeGrant, BreakerPolicy]],
        outcome: Outcome,
        *,
        jitter: float,
        count: int = 1,
        slow: Sequence[int] | None = None,
    ) -> list[Transition]:
        """See :meth:`BreakerStore.record`: one EVALSHA for all grants."""
        if not grants:
            return []
        check_aggregate(grants, outcome, count, slow)
        keys, argv = self._record_call(grants, outcome, jitter, count, slow)
        names = [g.scope for g, _ in grants]
        try:
            packed = self._pack("EVALSHA", self._record.sha, len(keys), *keys, *argv)
            rows = self._send_packed(packed, self._record)
        except redis.RedisError as exc:
            self._unavailable("record", names, exc)
        return self._transitions(_text(rows), names)

    def record_many(self, items: Sequence[RecordItem], *, jitter: float) -> list[Transition]:
        """See :meth:`BreakerStore.record_many`: one pipeline (one round trip) of EVALSHAs,
        applied in order; each record stays one atomic script call."""
        items = [item for item in items if item.grants]
        if len(items) <= 1:
            return [
                tr
                for item in items
                for tr in self.record(
                    item.grants, item.outcome, jitter=jitter, count=item.count, slow=item.slow
                )
            ]
        calls = []
        for item in items:
            check_aggregate(item.grants, item.outcome, item.count, item.slow)
            calls.append(
                self._record_call(item.grants, item.outcome, jitter, item.count, item.slow)
            )
        names = [g.scope for item in items for g, _ in item.grants]
        try:
            try:
                replies = self._pipeline_records(calls)
            except redis.exceptions.NoScriptError:  # script cache flushed: load it, retry once
                self._client.script_load(self._record.script)
                replies = self._pipeline_records(calls)
        except redis.RedisError as exc:
            self._unavailable("record", names, exc)
        out: list[Transition] = []
        for item, reply in zip(items, replies, strict=True):
            out += self._transitions(_text(reply), [g.scope for g, _ in item.grants])
        return out

    def _pipeline_records(self, calls: list[tuple[list[str], list[str | bytes]]]) -> list[Any]:
        # evalsha straight on the pipeline: redis-py's Script in a pipeline would first send
        # SCRIPT EXISTS, an extra round trip on the caller's path.
        pipe = self._client.pipeline(transaction=False)
        for keys, argv in calls:
            words = ("EVALSHA", self._record.sha, len(keys), *keys, *argv)
            pipe.execute_command(*words)  # type: ignore[no-untyped-call]
        return list(pipe.execute())

    def control(self, scope: Scope, policy: BreakerPolicy, action: ControlAction) -> Transition:
        """See :meth:`BreakerStore.control`: one EVALSHA."""
        check_control_action(action)
        try:
            row = self._control(keys=[self.key(scope)], args=[action, policy_arg(policy)])
        except redis.RedisError as exc:
            self._unavailable("control", [scope], exc)
        return self._transitions(_text(row), [scope])[0]

    def snapshot(self, scope: Scope, policy: BreakerPolicy) -> ScopeSnapshot:
        """See :meth:`BreakerStore.snapshot`: one MULTI/EXEC of TIME and HGETALL, no writes."""
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.time()
            pipe.hgetall(self.key(scope))
            (sec, usec), raw = pipe.execute()
        except redis.RedisError as exc:
            self._unavailable("snapshot", [scope], exc)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return _snapshot_from_hash(scope, fields, int(sec) * 1000 + int(usec) // 1000)

    def scopes(self) -> list[Scope]:
        """See :meth:`BreakerStore.scopes` (SCAN over ``<ns>:cb:*``)."""
        found: set[Scope] = set()
        try:
            for key in self._client.scan_iter(match=self._prefix + "*", count=500):
                scope = self._scope_of(_text(key))
                if scope is not None:
                    found.add(scope)
        except redis.RedisError as exc:
            self._unavailable("scopes", [], exc)
        return sorted(found)

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers PING."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._unavailable("ping", [], exc)
