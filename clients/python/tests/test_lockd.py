"""The lockd package against a real lockd at LOCKD_ADDR (the Go test
TestPythonPackage starts one and runs this after a pip install)."""

import os
import threading
import time
import unittest
import uuid

import lockd

ADDR = os.environ.get("LOCKD_ADDR")


def fresh(name):
    # A ':' makes urllib.parse.quote send %3A, which lockd decodes.
    return "py:%s-%s" % (name, uuid.uuid4().hex[:8])


@unittest.skipUnless(ADDR, "LOCKD_ADDR is not set")
class LockdTest(unittest.TestCase):
    def setUp(self):
        self.client = lockd.Client(ADDR)

    def test_acquire_renew_inspect_release(self):
        key = fresh("walk")
        before = time.monotonic()
        lock = self.client.acquire(key, ttl_ms=5000, owner="unittest")
        self.assertEqual(lock.key, key)
        self.assertGreater(lock.token, 0)
        # The deadline counts from the send, never from the answer.
        self.assertLessEqual(lock.deadline, before + 5.0 + 0.001)
        self.assertGreater(lock.deadline, before)
        st = self.client.inspect(key)
        self.assertEqual((st["held"], st["owner"], st["token"]), (True, "unittest", lock.token))
        lock.renew()
        lock.release()
        self.assertFalse(self.client.inspect(key)["held"])
        with self.assertRaises(lockd.LeaseExpired) as cm:
            self.client.call("POST", "/v1/locks/%s/release" % key.replace(":", "%3A"), {"lease_id": lock.lease_id})
        self.assertEqual((cm.exception.status, cm.exception.code), (410, "lease_expired"))

    def test_held_raises_lock_held_with_holder(self):
        key = fresh("held")
        with self.client.lock(key, ttl_ms=5000, owner="first") as lock:
            with self.assertRaises(lockd.LockHeld) as cm:
                self.client.acquire(key, wait_ms=100, owner="second")
            self.assertEqual(cm.exception.status, 409)
            self.assertEqual(cm.exception.holder["token"], lock.token)
            self.assertEqual(cm.exception.holder["owner"], "first")

    def test_bad_input_raises_bad_request(self):
        with self.assertRaises(lockd.BadRequest) as cm:
            self.client.acquire(fresh("bad"), ttl_ms=1)
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "invalid_ttl_ms"))
        with self.assertRaises(lockd.NotFound):
            self.client.call("GET", "/v2/locks")

    def test_context_manager_renews_in_a_thread(self):
        key = fresh("renews")
        with self.client.lock(key, ttl_ms=600) as lock:
            time.sleep(2.0)  # more than three TTLs
            self.assertFalse(lock.lost.is_set())
            self.assertTrue(lock.valid())
            st = self.client.inspect(key)
            self.assertEqual((st["held"], st["token"]), (True, lock.token))
        self.assertFalse(self.client.inspect(key)["held"])

    def test_lost_when_the_lease_is_gone(self):
        key = fresh("lost")
        with self.client.lock(key, ttl_ms=600) as lock:
            # Someone with the lease id releases it behind the Lock's back:
            # its next renew is refused and it says so.
            self.client.call("POST", "/v1/locks/%s/release" % key.replace(":", "%3A"), {"lease_id": lock.lease_id})
            self.assertTrue(lock.lost.wait(10), "lost not set 10 s after the lease ended")
            self.assertFalse(lock.valid())

    def test_idempotency_key_replays_the_grant(self):
        key = fresh("idem")
        ik = str(uuid.uuid4())
        first = self.client.acquire(key, ttl_ms=5000, idempotency_key=ik)
        again = self.client.acquire(key, ttl_ms=5000, idempotency_key=ik)
        self.assertEqual((again.lease_id, again.token), (first.lease_id, first.token))
        first.release()


if __name__ == "__main__":
    unittest.main()
