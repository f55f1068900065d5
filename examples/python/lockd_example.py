#!/usr/bin/env python3
"""lockd from Python with the standard library only.

    LOCKD_ADDR=127.0.0.1:7070 python3 examples/python/lockd_example.py [KEY]

Acquires a lock, keeps it renewed in a background thread, does work with the
fencing token (a write to KV_URL, e.g. examples/kvstore, when set), and
releases it. The Lock's deadline is computed from when each request was SENT,
so `lock.valid()` turns false before the server could give the lock away.

Each acquire carries a fresh Idempotency-Key, reused on its retries: after a
lost reply (connection reset, timeout) or a 503 the retry gets the grant the
first attempt made, so a lost reply never leaves an orphan that blocks the
key for a TTL. The tests in examples/ run this file against a real lockd,
and once through a proxy that drops the first reply.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid


class LockdError(Exception):
    def __init__(self, status, problem):
        self.status = status
        self.problem = problem
        self.code = problem.get("code", "")
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class Client:
    def __init__(self, addr):
        self.base = addr if "://" in addr else "http://" + addr

    def call(self, method, path, body=None, timeout=30.0, headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = {"detail": raw.decode(errors="replace")}
            raise LockdError(e.code, problem) from None

    def acquire(self, key, ttl_ms=10000, wait_ms=0, owner="python",
                retries=4, backoff=0.5):
        # The lease cannot have started before the FIRST send: a retry may
        # be answered with the grant the first attempt made.
        sent = time.monotonic()
        headers = {"Idempotency-Key": '"%s"' % uuid.uuid4()}
        attempt = 0
        while True:
            left = max(0, wait_ms - int((time.monotonic() - sent) * 1000))
            try:
                g = self.call("POST", f"/v1/locks/{key}/acquire",
                              {"ttl_ms": ttl_ms, "wait_ms": left if wait_ms else 0, "owner": owner},
                              timeout=left / 1000 + 30, headers=headers)
                break
            except LockdError as e:
                if e.code == "idempotency_unsupported" and headers:
                    # Nothing was done; this lockd keeps no records, so a
                    # retry after a lost reply would not be safe: one try.
                    headers, retries = None, 0
                    continue
                if e.status != 503 or attempt >= retries:
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
        lock.start()
        return lock


class Lock:
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
        self._thread.start()

    def valid(self):
        return not self.lost.is_set() and time.monotonic() < self.deadline

    def renew(self):
        sent = time.monotonic()
        self.client.call("POST", f"/v1/locks/{self.key}/renew",
                         {"lease_id": self.lease_id, "ttl_ms": int(self.ttl * 1000)},
                         timeout=max(0.1, self.deadline - sent))
        self.deadline = sent + self.ttl

    def _renew_loop(self):
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LockdError as e:
                if e.code == "lease_expired":
                    self.lost.set()
                    return
            except OSError:
                pass  # transient; retried at the next tick
            if time.monotonic() >= self.deadline:
                self.lost.set()
                return

    def release(self):
        self._stop.set()
        self._thread.join()
        self.client.call("POST",
                         f"/v1/locks/{self.key}/release", {"lease_id": self.lease_id})


def main():
    key = sys.argv[1] if len(sys.argv) > 1 else "reports:nightly"
    client = Client(os.environ.get("LOCKD_ADDR", "127.0.0.1:7070"))
    try:
        lock = client.acquire(key, ttl_ms=10000, wait_ms=10000, owner="lockd_example.py")
    except LockdError as e:
        if e.code == "lock_held":
            print(f"{key} is held by {e.problem.get('holder')}", file=sys.stderr)
            return 75
        raise
    print(f"acquired {key} token={lock.token}")
    try:
        kv_url = os.environ.get("KV_URL")
        if kv_url:
            if not lock.valid():
                raise RuntimeError("lease no longer trusted; not writing")
            req = urllib.request.Request(
                kv_url, data=f"written by python with token {lock.token}".encode(), method="PUT",
                headers={"Lock-Key": key, "Lock-Token": str(lock.token)})
            with urllib.request.urlopen(req, timeout=10) as resp:
                print(f"wrote {kv_url}: {resp.status}")
        lock.renew()
        print(f"renewed {key} token={lock.token}")
        state = client.call("GET", f"/v1/locks/{key}")
        print(f"status: held={state['held']} token={state.get('token')}")
    finally:
        lock.release()
    print(f"released {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
