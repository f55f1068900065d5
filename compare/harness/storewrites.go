package harness

import (
	"encoding/binary"
	"strings"
)

// Which of the requests rtCounter counts are writes, for the scale
// scenario's renewal rounds. Redis's hook cannot tell a script that writes
// from one that reads, so there every request counts as a write.

// etcdWrites: the unary calls that change the store (a Txn counts even when
// its branches only read: an upper bound).
func etcdWrites(method string) bool {
	for _, m := range []string{"/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange",
		"/etcdserverpb.Lease/LeaseGrant", "/etcdserverpb.Lease/LeaseRevoke"} {
		if strings.HasSuffix(method, m) {
			return true
		}
	}
	return false
}

// zkWrites reads the opcode of a request go-zookeeper writes in one Write:
// a 4-byte length, the xid, then the opcode (ZooKeeper's OpCode values).
func zkWrites(p []byte) bool {
	if len(p) < 12 {
		return false
	}
	switch int32(binary.BigEndian.Uint32(p[8:12])) {
	case 1, 2, 5, 7, 13, 14, 15, 16, 19, 20, 21: // create, delete, setData, setACL, check, multi, create2, reconfig, createContainer, deleteContainer, createTTL
		return true
	}
	return false
}
