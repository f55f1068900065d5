"""A client for lockd, the distributed lock service, with the standard
library only.

    client = lockd.Client("127.0.0.1:7070")
    with client.lock("reports:nightly", ttl_ms=10000) as lock:
        write(lock.token)          # fence every write with the token
        if lock.lost.is_set(): ...  # stop: someone else may hold it now

A Lock renews itself in a thread. Its `deadline` is a time.monotonic()
value counted from when the acquire (or the last renew) was SENT, so it
never trusts the lease longer than the server could. `lost` is set when a
renew is refused or the deadline passes before a renew succeeds.

Each acquire sends a fresh Idempotency-Key, reused on its retries: a retry
after a lost reply or a 503 gets the grant the first attempt made.

Refusals raise a LockdError subclass chosen by the problem's `code`.
"""

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

__all__ = [
    "Client", "Lock", "LockdError", "BadRequest", "Unauthorized", "Forbidden", "NotFound",
    "LockHeld", "LeaseExpired", "IdempotencyKeyReused", "TooManyRequests", "NotSupported",
    "Unavailable", "InternalError",
]


class LockdError(Exception):
    """A problem+json answer from lockd: status, code, detail, problem."""

    def __init__(self, status, problem):
        self.status = status
        self.problem = problem
        self.code = problem.get("code", "")
        self.detail = problem.get("detail", "")
        super().__init__(f"{status} {self.code}: {self.detail}")


class BadRequest(LockdError):
    """400: the request is malformed; `code` names the field (invalid_*, unknown_*)."""


class Unauthorized(LockdError):
    """401 unauthorized: no known token."""


class Forbidden(LockdError):
    """403 forbidden: the token may not do this to this key."""


class NotFound(LockdError):
    """404 not_found: no such route."""


class LockHeld(LockdError):
    """409 lock_held: not granted within wait_ms; `holder` when known."""

    @property
    def holder(self):
        return self.problem.get("holder")


class LeaseExpired(LockdError):
    """410 lease_expired: the lease no longer holds the lock."""


class IdempotencyKeyReused(LockdError):
    """422 idempotency_key_reused: the key was used with another owner or ttl_ms."""


class TooManyRequests(LockdError):
    """429 too_many_waiters, too_many_leases or rate_limited; see retry_after."""

    def __init__(self, status, problem, retry_after=None):
        super().__init__(status, problem)
        self.retry_after = retry_after


class NotSupported(LockdError):
    """501 not_supported or idempotency_unsupported."""


class Unavailable(LockdError):
    """503 backend_unavailable, shutting_down or clock_skew: retry later."""


class InternalError(LockdError):
    """500 internal_error."""


_BY_CODE = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "lock_held": LockHeld,
    "lease_expired": LeaseExpired,
    "idempotency_key_reused": IdempotencyKeyReused,
    "too_many_waiters": TooManyRequests,
    "too_many_leases": TooManyRequests,
    "rate_limited": TooManyRequests,
    "not_supported": NotSupported,
    "idempotency_unsupported": NotSupported,
    "backend_unavailable": Unavailable,
    "shutting_down": Unavailable,
    "clock_skew": Unavailable,
    "internal_error": InternalError,
}


def _error(status, problem, headers):
    code = problem.get("code", "")
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = BadRequest if status == 400 or code.startswith(("invalid_", "unknown_")) else LockdError
    if cls is TooManyRequests:
        ra = headers.get("Retry-After") if headers else None
        return TooManyRequests(status, problem, int(ra) if ra and ra.isdigit() else None)
    return cls(status, problem)


class Client:
    """lockd's HTTP API at addr ("host:port" or a URL), with an optional bearer token."""

    def __init__(self, addr="127.0.0.1:7070", token=None, timeout=30.0):
        self.base = (addr if "://" in addr else "http://" + addr).rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method, path, body=None, timeout=None, headers=None):
        """Sends one request; returns the decoded JSON answer (None for 204)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = {"detail": raw.decode(errors="replace")}
            raise _error(e.code, problem, e.headers) from None

    @staticmethod
    def _path(key, *rest):
        return "/v1/locks/" + urllib.parse.quote(key, safe="") + "".join("/" + r for r in rest)

    def acquire(self, key, ttl_ms=15000, wait_ms=0, owner="", retries=4, backoff=0.5,
                idempotency_key=None):
        """Acquires key and returns its Lock (not yet renewing: use it in a
        with block, or call start()). Raises LockHeld when not granted
        within wait_ms. A lost reply or a 503 is retried with the same
        Idempotency-Key, up to retries times."""
        # The lease cannot have started before the FIRST send: a retry may
        # be answered with the grant the first attempt made.
        sent = time.monotonic()
        headers = {"Idempotency-Key": '"%s"' % (idempotency_key or uuid.uuid4())}
        attempt = 0
        while True:
            left = max(0, wait_ms - int((time.monotonic() - sent) * 1000))
            try:
                g = self.call("POST", self._path(key, "acquire"),
                              {"ttl_ms": ttl_ms, "wait_ms": left, "owner": owner},
                              timeout=left / 1000 + self.timeout, headers=headers)
                break
            except NotSupported as e:
                if e.code != "idempotency_unsupported" or not headers:
                    raise
                # Nothing was done, and this lockd keeps no records: a retry
                # after a lost reply would not be safe, so one plain try.
                headers, retries = None, 0
                continue
            except Unavailable:
                if attempt >= retries:
                    raise
            except LockdError:
                raise
            except OSError:  # the reply may have been lost
                if not headers or attempt >= retries:
                    raise
            attempt += 1
            time.sleep(backoff * 2 ** (attempt - 1))
        lock = Lock(self, g, sent)
        if time.monotonic() - sent > lock.ttl / 3:
            # After a long wait the lease started well after the send: renew
            # at once so that the deadline counts from a recent send.
            lock.renew()
        return lock

    def lock(self, key, ttl_ms=15000, wait_ms=0, owner="", **kw):
        """A context manager: acquires on entry, renews while inside, releases on exit."""
        return _LockContext(self, key, dict(ttl_ms=ttl_ms, wait_ms=wait_ms, owner=owner, **kw))

    def inspect(self, key):
        """The lock's state: held, owner, token, expires_at, waiters."""
        return self.call("GET", self._path(key))


class _LockContext:
    def __init__(self, client, key, kw):
        self.client, self.key, self.kw, self.held = client, key, kw, None

    def __enter__(self):
        self.held = self.client.acquire(self.key, **self.kw)
        self.held.start()
        return self.held

    def __exit__(self, *exc):
        self.held.release()
        return False


class Lock:
    """A held lease: key, lease_id, token, ttl (seconds), deadline
    (time.monotonic() from the last send), lost (a threading.Event)."""

    def __init__(self, client, grant, sent):
        self.client = client
        self.key = grant["key"]
        self.lease_id = grant["lease_id"]
        self.token = grant["token"]
        self.ttl = grant["ttl_ms"] / 1000
        self.deadline = sent + self.ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)

    def start(self):
        """Renews in a background thread every ttl/3 until release."""
        self._thread.start()

    def valid(self):
        return not self.lost.is_set() and time.monotonic() < self.deadline

    def renew(self):
        sent = time.monotonic()
        g = self.client.call("POST", self.client._path(self.key, "renew"),
                             {"lease_id": self.lease_id, "ttl_ms": int(self.ttl * 1000)},
                             timeout=max(0.1, self.deadline - sent))
        self.deadline = sent + g["ttl_ms"] / 1000

    def _renew_loop(self):
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LeaseExpired:
                self.lost.set()
                return
            except (LockdError, OSError):
                pass  # transient; retried at the next tick
            if time.monotonic() >= self.deadline:
                self.lost.set()
                return

    def release(self):
        """Stops renewing and releases; a lease already lost is not an error."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.client.call("POST", self.client._path(self.key, "release"), {"lease_id": self.lease_id})
        except LeaseExpired:
            if not self.lost.is_set():
                raise
