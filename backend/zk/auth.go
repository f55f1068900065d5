package zk

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/internal/lease"
)

// Digest is a ZooKeeper identity of the "digest" scheme: a user and its
// password.
//
// ZooKeeper accepts any digest credential when a client adds it: the server
// only hashes it into an identity and compares that identity with node ACLs
// later. So a wrong password is never refused at login; it shows up as
// zk.ErrNoAuth on nodes whose ACL names the right one (see CheckAccess).
type Digest struct {
	User     string
	Password string
}

// Validate reports a user or password ZooKeeper's digest scheme cannot take.
func (d Digest) Validate() error {
	switch {
	case d.User == "":
		return errors.New("zk: digest auth needs a user")
	case strings.Contains(d.User, ":"):
		// The server splits "user:password" at the first colon.
		return fmt.Errorf("zk: digest user %q contains ':'", d.User)
	case d.Password == "":
		return fmt.Errorf("zk: digest user %q has an empty password", d.User)
	}
	return nil
}

// ACL gives this identity every permission on a node and nobody else any:
// not world:anyone, not other digest users. (Only a ZooKeeper superuser, if
// the ensemble configures one, passes every ACL.)
func (d Digest) ACL() []zk.ACL { return zk.DigestACL(zk.PermAll, d.User, d.Password) }

// AddAuth adds the identity to conn's session. go-zookeeper remembers it and
// sends it again on every reconnect, before any request queued meanwhile, so
// it holds for the life of conn.
func (d Digest) AddAuth(conn *zk.Conn) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if err := conn.AddAuth("digest", []byte(d.User+":"+d.Password)); err != nil {
		return fmt.Errorf("zk: add digest auth for user %q: %w", d.User, err)
	}
	return nil
}

// ErrNoPermission is returned by CheckAccess when ZooKeeper refuses the
// backend's identity on Root (it wraps zk.ErrNoAuth too).
var ErrNoPermission = errors.New("zk: no permission")

// CheckAccess proves that the backend can do under Root what locking needs:
// it creates Root (and missing parents) with the backend's ACL when missing,
// lists Root's children, and creates, reads and deletes a node under it. A
// node made by someone else whose ACL does not grant this client's identity
// fails with an error wrapping ErrNoPermission and zk.ErrNoAuth.
//
// Call it once at start, so that a wrong credential stops lockd before the
// first request rather than failing every request.
func (b *Backend) CheckAccess(ctx context.Context) error {
	noAuth := func(op, p string, err error) error {
		if errors.Is(err, zk.ErrNoAuth) {
			return fmt.Errorf("%w on %s: ZooKeeper refused to %s it (NoAuth): the node's ACL does not grant "+
				"this client's identity (no digest auth given, another user, or a wrong password: "+
				"ZooKeeper accepts any digest password at login and refuses it only on nodes): %w",
				ErrNoPermission, p, op, err)
		}
		return unavailable("check access: "+op+" "+p, err)
	}
	if p, err := b.ensureRoot(ctx); err != nil {
		return noAuth("create", p, err)
	}
	if _, err := call(ctx, func() ([]string, error) {
		names, _, err := b.conn.Children(b.root)
		return names, err
	}); err != nil {
		return noAuth("list", b.root, err)
	}
	// A key starts with a letter or digit, so this name is never a key's.
	probe := b.root + "/_lockd-access-check-" + lease.NewID()
	if _, err := call(ctx, func() (string, error) {
		return b.conn.Create(probe, []byte("lockd"), zk.FlagEphemeral, b.acl)
	}); err != nil {
		return noAuth("create a node under", b.root, err)
	}
	_, err := call(ctx, func() ([]byte, error) {
		data, _, err := b.conn.Get(probe)
		return data, err
	})
	if derr := b.delete(ctx, probe, -1); err == nil && derr != nil {
		return noAuth("delete a node under", b.root, derr)
	}
	if err != nil {
		return noAuth("read a node it created under", b.root, err)
	}
	return nil
}

// RootACL returns the ACL Root has in ZooKeeper.
func (b *Backend) RootACL(ctx context.Context) ([]zk.ACL, error) {
	acl, err := call(ctx, func() ([]zk.ACL, error) {
		acl, _, err := b.conn.GetACL(b.root)
		return acl, err
	})
	if err != nil {
		return nil, unavailable("get ACL "+b.root, err)
	}
	return acl, nil
}
