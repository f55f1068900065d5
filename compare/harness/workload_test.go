package harness

import (
	"context"
	"testing"
	"time"
)

// etcdDeployment is one embedded etcd member for the tests, closed at the
// end.
func etcdDeployment(t *testing.T) *deployment {
	t.Helper()
	d, err := startEtcd(1)
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(func() { d.close() })
	return d
}

// slowReplies holds back the reply to every other grant for delay, as a
// long queue wait or a slow network would: the lease started when the
// store granted it, the client learns of it late. It notes when each
// successful acquire or renew was sent, to check the client against.
type slowReplies struct {
	Locker
	delay  time.Duration
	n      int
	sends  []time.Time
	renews int
}

func (s *slowReplies) Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	l, err := s.Locker.Acquire(ctx, key, owner, ttl, wait)
	if err == nil {
		s.sends = append(s.sends, sent)
		if s.n++; s.n%2 == 0 {
			time.Sleep(s.delay)
		}
	}
	return l, err
}

func (s *slowReplies) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	sent := time.Now()
	err := s.Locker.(renewer).Renew(ctx, l, ttl)
	if err == nil {
		s.sends = append(s.sends, sent)
		s.renews++
	}
	return err
}

// deadlineAt is the client's deadline at t as the real client computes it:
// the send time of the last successful acquire or renew before t, + ttl.
func (s *slowReplies) deadlineAt(t time.Time, ttl time.Duration) time.Time {
	var last time.Time
	for _, x := range s.sends {
		if x.Before(t) {
			last = x
		}
	}
	return last.Add(ttl)
}

// runSlow runs the correctness workload, in process over real etcd, with
// every other grant's reply held back by delay.
func runSlow(t *testing.T, delay time.Duration) (workloadResult, []*slowReplies) {
	return runSlowHolding(t, delay, time.Millisecond)
}

// runSlowHolding is runSlow with critical sections of mean length hold.
func runSlowHolding(t *testing.T, delay, hold time.Duration) (workloadResult, []*slowReplies) {
	t.Helper()
	d := etcdDeployment(t)
	b, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	const clients = 2
	lockers := make([]*slowReplies, clients)
	for i := range lockers {
		lockers[i] = &slowReplies{Locker: contractLocker{b: b}, delay: delay}
	}
	w := &workload{Clients: clients, TTL: 300 * time.Millisecond, Wait: time.Second, Hold: hold,
		Duration: 2 * time.Second, Seed: 1, locker: func(c int) Locker { return lockers[c] }}
	return w.run(t.Context(), nil), lockers
}

// TestWorkloadNeverUsesAnExpiredLease: a grant that reaches the client after
// its lease ran out (send + TTL) is not used. Before, the workload read and
// wrote the registers with it anyway, which the real client never does.
func TestWorkloadNeverUsesAnExpiredLease(t *testing.T) {
	const ttl = 300 * time.Millisecond
	res, lockers := runSlow(t, ttl*3/2)
	late := 0
	for _, op := range res.History {
		if op.Kind == opRMW && !op.Call.Before(lockers[op.Client].deadlineAt(op.Call, ttl)) {
			late++
		}
	}
	if late > 0 {
		t.Errorf("%d critical sections started after their lease's deadline (last acquire or renew sent + TTL)", late)
	}
	if res.Granted < 4 {
		t.Fatalf("only %d grants; the run did not exercise slow replies", res.Granted)
	}
}

// TestWorkloadRenewsAfterALongWait: a grant that arrives with half its TTL
// left is renewed at once, as client.AcquireLease does, and then used with
// the renew's deadline. Before, the workload never renewed.
func TestWorkloadRenewsAfterALongWait(t *testing.T) {
	const ttl = 300 * time.Millisecond
	res, lockers := runSlow(t, ttl/2)
	renews := 0
	for _, l := range lockers {
		renews += l.renews
	}
	if renews == 0 {
		t.Errorf("no renew after %d grants, half of them delivered with half the TTL left", res.Granted)
	}
	for _, op := range res.History {
		if op.Kind == opRMW && !op.Call.Before(lockers[op.Client].deadlineAt(op.Call, ttl)) {
			t.Errorf("client %d started a critical section past its deadline", op.Client)
		}
	}
}

// TestLateGrantSupersedesNobody: a grant whose reply reaches its client
// after the lease ran out (a reply held by a paused lockd replica) is never
// used, so it supersedes nobody: the holder that was granted after it ran
// out, and is inside when the late reply lands, writes a current write, not
// a stale one. Before, the register numbered grants in the order their
// replies arrived, so that holder's write counted as a stale write accepted
// with fencing on an unbroken backend: the soak's red cell on etcd and on
// Redlock, with 0 lost increments and a linearizable history.
func TestLateGrantSupersedesNobody(t *testing.T) {
	const ttl = 300 * time.Millisecond
	// Critical sections of up to 100 ms, so that late replies land while
	// the other client is inside.
	res, _ := runSlowHolding(t, ttl*6/5, 50*time.Millisecond)
	if res.Granted < 4 {
		t.Fatalf("only %d grants; the run did not exercise late replies", res.Granted)
	}
	if got := res.Fenced.StaleAccepted; got != 0 {
		t.Errorf("fenced stale writes accepted = %d on an unbroken backend, want 0 (first: %s)", got, res.Fenced.FirstStale)
	}
	if got := res.Unfenced.StaleAccepted; got != 0 {
		t.Errorf("unfenced stale writes accepted = %d with no holder ever superseded, want 0", got)
	}
	if got := res.Unfenced.LostIncrements; got != 0 {
		t.Errorf("unfenced lost increments = %d, want 0: no two holders were ever inside at once", got)
	}
}
