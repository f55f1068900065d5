package etcd_test

import (
	"testing"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// Every promise of the contract holds over an etcd that requires client
// certificates and has authentication on, with lockd's user allowed
// readwrite on its prefix and nothing else: leases (grant, keep-alive,
// revoke), transactions and watches all work under that least privilege.
func TestConformanceTLSAndRBAC(t *testing.T) {
	ca := testserver.TestCA(t)
	e := testserver.EtcdClusterWith(t, 1, testserver.EtcdOptions{CA: ca, RootPassword: "root-secret"})
	const prefix = "/lockd-ct/"
	if err := e.AddUser("lockd", "lockd-secret", prefix); err != nil {
		t.Fatal(err)
	}
	cert := ca.MustIssue(t, "lockd-etcd-client", "lockd")
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		cli, err := e.Client("lockd", "lockd-secret", cert)
		if err != nil {
			t.Fatal(err)
		}
		b := etcdb.New(cli, etcdb.Options{Prefix: prefix})
		t.Cleanup(func() { b.Close(); cli.Close() })
		return b
	}, backendtest.Options{})
}
