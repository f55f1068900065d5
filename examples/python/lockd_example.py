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

    python3 examples/python/lockd_example.py semaphore KEY [PERMITS]
    python3 examples/python/lockd_example.py read|write KEY

take a semaphore permit (at most PERMITS holders at once, each in its own
slot) or a read or write lock, renewed the same way. A permit's writes carry
Lock-Slot: its tokens increase per slot, so a resource fences per (key, slot).
Semaphores and RW locks take no Idempotency-Key yet, so their acquires are
sent once, not retried (a lost reply holds a slot until its TTL ends).
"""

import json
import os
import socket
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


    def acquire_semaphore(self, key, permits, ttl_ms=10000, wait_ms=0, owner="python"):
        """One permit of a semaphore of `permits`: a renewing Permit with a slot."""
        return self._hold(Permit, f"/v1/semaphores/{key}/acquire",
                          {"permits": permits, "ttl_ms": ttl_ms, "wait_ms": wait_ms, "owner": owner}, wait_ms)

    def acquire_read(self, key, ttl_ms=10000, wait_ms=0, owner="python"):
        """A shared hold of an RW lock: readers share, no writer meanwhile."""
        return self._hold(RWLock, f"/v1/rwlocks/{key}/acquire",
                          {"mode": "read", "ttl_ms": ttl_ms, "wait_ms": wait_ms, "owner": owner}, wait_ms)

    def acquire_write(self, key, ttl_ms=10000, wait_ms=0, owner="python"):
        """The exclusive hold of an RW lock: no reader, no other writer."""
        return self._hold(RWLock, f"/v1/rwlocks/{key}/acquire",
                          {"mode": "write", "ttl_ms": ttl_ms, "wait_ms": wait_ms, "owner": owner}, wait_ms)

    def _hold(self, cls, path, body, wait_ms):
        # Sent once: these acquires take no Idempotency-Key yet, and a retry
        # after a lost reply would make a second grant beside the first.
        sent = time.monotonic()
        g = self.call("POST", path, body, timeout=wait_ms / 1000 + 30)
        lock = cls(self, g, sent)
        if time.monotonic() - sent > lock.ttl / 3:
            lock.renew()  # after a long wait, as for acquire
        lock.start()
        return lock

    def campaign(self, name, ttl_ms=10000, wait_ms=0, owner="python", value=""):
        sent = time.monotonic()
        # No Idempotency-Key on campaigns: a lost reply is not retried (the
        # leadership it may have made runs out after its TTL).
        g = self.call("POST", f"/v1/elections/{name}/campaign",
                      {"ttl_ms": ttl_ms, "wait_ms": wait_ms, "owner": owner, "value": value},
                      timeout=wait_ms / 1000 + 30)
        lead = Leadership(self, g, sent)
        if time.monotonic() - sent > lead.ttl / 3:
            lead.renew()  # after a long wait, as for acquire
        lead.start()
        return lead

    def observe(self, name, idle=60.0, retries=None):
        """Yield the events of an election's stream, reconnecting after a drop."""
        last_id = None
        failures = 0
        while True:
            req = urllib.request.Request(self.base + f"/v1/elections/{name}/observe")
            req.add_header("Accept", "text/event-stream")
            if last_id:
                req.add_header("Last-Event-ID", last_id)
            try:
                # The server pings every 15 s: a longer silence is a dead link.
                with urllib.request.urlopen(req, timeout=idle) as resp:
                    failures = 0
                    event, data = None, []
                    for raw in resp:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith(":"):
                            continue  # ": ping" and other comments
                        if line:
                            field, _, value = line.partition(":")
                            value = value[1:] if value.startswith(" ") else value
                            if field == "id":
                                last_id = value
                            elif field == "event":
                                event = value
                            elif field == "data":
                                data.append(value)
                            continue
                        if event or data:
                            if event != "shutdown":  # the server stops: reconnect
                                yield {"event": event or "message", "id": last_id,
                                       "data": json.loads("\n".join(data)) if data else None}
                            event, data = None, []
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code != 429:
                    raise LockdError(e.code, json.loads(e.read() or b"{}")) from None
            except (OSError, socket.timeout):
                pass  # dropped or silent: reconnect with Last-Event-ID
            failures += 1
            if retries is not None and failures > retries:
                raise ConnectionError(f"observe {name}: gave up after {retries} reconnects")
            time.sleep(min(2.0, 0.1 * 2 ** failures))


class Lock:
    kind = "locks"  # the API's collection: /v1/{kind}/{key}/renew, /release

    def __init__(self, client, grant, sent):
        self.client = client
        self.key = grant["key"]
        self.path = f"/v1/{self.kind}/{self.key}"
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
        self.client.call("POST", f"{self.path}/renew",
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
        self.client.call("POST", f"{self.path}/release", {"lease_id": self.lease_id})

    def fence_headers(self):
        """The headers a fenced resource (examples/kvstore) checks on a write."""
        return {"Lock-Key": self.key, "Lock-Token": str(self.token)}


class Permit(Lock):
    """A semaphore permit: a Lock on one slot of `permits`.

    Tokens increase over all permits of the key, so another slot's valid
    holder may carry a lower token than this one: a resource fences per
    (key, slot), which Lock-Slot tells it.
    """
    kind = "semaphores"

    def __init__(self, client, grant, sent):
        super().__init__(client, grant, sent)
        self.slot = grant["slot"]
        self.permits = grant["permits"]

    def fence_headers(self):
        return {**super().fence_headers(), "Lock-Slot": str(self.slot)}


class RWLock(Lock):
    """A read or write hold of an RW lock (`mode`), each with its own lease.

    A write token is above every token granted before it, so a resource
    fences writes as for locks; readers share the key and need no fence.
    """
    kind = "rwlocks"

    def __init__(self, client, grant, sent):
        super().__init__(client, grant, sent)
        self.mode = grant["mode"]


class Leadership(Lock):
    """A won campaign: a Lock on the election whose token is the term."""

    def __init__(self, client, grant, sent):
        super().__init__(client, {**grant, "key": grant["name"], "token": grant["term"]}, sent)
        self.name = grant["name"]
        self.term = grant["term"]
        self.value = grant["value"]
        self.path = f"/v1/elections/{self.name}"

    def proclaim(self, value):
        if not self.valid():
            raise RuntimeError("leadership no longer trusted; not proclaiming")
        self.value = self.client.call("POST", f"{self.path}/proclaim",
                                      {"lease_id": self.lease_id, "value": value})["value"]

    def resign(self):
        self._stop.set()
        self._thread.join()
        self.client.call("POST", f"{self.path}/resign", {"lease_id": self.lease_id})
        self.lost.set()

    release = resign


def elect(client, name, value):
    try:
        lead = client.campaign(name, ttl_ms=10000, wait_ms=10000, owner="lockd_example.py", value=value)
    except LockdError as e:
        if e.code == "lock_held":
            print(f"{name} is led by {e.problem.get('leader')}", file=sys.stderr)
            return 75
        raise
    print(f"leader of {name} term={lead.term}")
    lead.proclaim(value + "/v2")
    print(f"proclaimed {lead.value} term={lead.term}")
    events = client.observe(name)
    first = next(events)
    print(f"observed {first['event']} {json.dumps(first['data'], sort_keys=True)}")
    lead.resign()
    after = next(events)
    print(f"observed {after['event']} {json.dumps(after['data'], sort_keys=True)}")
    print(f"resigned {name}")
    return 0


def use(client, lock, what):
    """Write to KV_URL (when set; a reader reads it) fenced by lock, renew,
    inspect, release."""
    key = lock.key
    print(f"acquired {what} token={lock.token}")
    try:
        kv_url = os.environ.get("KV_URL")
        if kv_url and getattr(lock, "mode", "") == "read":
            # Readers share the key: they read, and only writers write.
            try:
                with urllib.request.urlopen(kv_url, timeout=10) as resp:
                    print(f"read {kv_url}: {resp.status} {resp.read().decode()}")
            except urllib.error.HTTPError as e:
                print(f"read {kv_url}: {e.code}")
        elif kv_url:
            if not lock.valid():
                raise RuntimeError("lease no longer trusted; not writing")
            req = urllib.request.Request(
                kv_url, data=f"written by python with token {lock.token}".encode(), method="PUT",
                headers=lock.fence_headers())
            with urllib.request.urlopen(req, timeout=10) as resp:
                print(f"wrote {kv_url}: {resp.status}")
        lock.renew()
        print(f"renewed {key} token={lock.token}")
        state = client.call("GET", lock.path)
        if isinstance(lock, Permit):
            slots = " ".join(f"{h['slot']}:{h['token']}" for h in state["holders"])
            print(f"status: permits={state['permits']} holders(slot:token)={slots}")
        elif isinstance(lock, RWLock):
            print(f"status: mode={state.get('mode')} holders={len(state['holders'])}")
        else:
            print(f"status: held={state['held']} token={state.get('token')}")
    finally:
        lock.release()
    print(f"released {key}")
    return 0


def main():
    client = Client(os.environ.get("LOCKD_ADDR", "127.0.0.1:7070"))
    args = sys.argv[1:]
    if args and args[0] == "elect":
        return elect(client, args[1] if len(args) > 1 else "scheduler",
                     args[2] if len(args) > 2 else "http://python:8080")
    owner = "lockd_example.py"
    try:
        if args and args[0] == "semaphore":
            key = args[1] if len(args) > 1 else "api:quota"
            permits = int(args[2]) if len(args) > 2 else 5
            p = client.acquire_semaphore(key, permits, ttl_ms=10000, wait_ms=10000, owner=owner)
            return use(client, p, f"{key} slot={p.slot} of {p.permits}")
        if args and args[0] in ("read", "write"):
            key = args[1] if len(args) > 1 else "catalog"
            get = client.acquire_read if args[0] == "read" else client.acquire_write
            rw = get(key, ttl_ms=10000, wait_ms=10000, owner=owner)
            return use(client, rw, f"{key} mode={rw.mode}")
        key = args[0] if args else "reports:nightly"
        return use(client, client.acquire(key, ttl_ms=10000, wait_ms=10000, owner=owner), key)
    except LockdError as e:
        if e.code == "lock_held":
            print(f"held: {e.problem.get('holder') or e.problem.get('holders')}", file=sys.stderr)
            return 75
        raise


if __name__ == "__main__":
    sys.exit(main())
