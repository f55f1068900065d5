package httpapi

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/version"
)

// Metrics are lockd's Prometheus metrics. Make them before the backend so
// that its hooks can count expiries (Expired).
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec
	acquires *prometheus.HistogramVec
	sessions *prometheus.HistogramVec
	held     *heldLocks
	waiters  prometheus.Gauge
	streams  *prometheus.GaugeVec
	expired  prometheus.Counter
	limited  *prometheus.CounterVec
	conns    prometheus.Gauge
	accepted prometheus.Counter

	clockOffset      prometheus.Gauge
	clockUncertainty prometheus.Gauge
}

// NewMetrics registers lockd's metrics, and the Go and process collectors,
// in a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lockd_http_request_duration_seconds",
			Help:    "HTTP requests by route, method and status.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 16),
		}, []string{"route", "method", "status"}),
		acquires: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lockd_acquire_duration_seconds",
			Help:    "Acquire calls by backend and outcome (granted, held, unavailable, cancelled, error), waits included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 18),
		}, []string{"backend", "outcome"}),
		sessions: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lockd_session_duration_seconds",
			Help:    "Session calls by backend, op (open, renew, close) and outcome (ok, expired, unavailable, cancelled, error).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 16),
		}, []string{"backend", "op", "outcome"}),
		held: &heldLocks{desc: prometheus.NewDesc("lockd_held_locks",
			"Locks held in the whole store (every replica reports the same: take max, not sum), listed at most every 5s, at most 10000; absent when the store did not answer.",
			nil, nil)},
		waiters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_waiters",
			Help: "Acquire long polls waiting on this replica.",
		}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockd_open_streams",
			Help: "Event streams open on this replica, by kind (lock: key events; election: observers).",
		}, []string{"kind"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockd_leases_expired_total",
			Help: "Grants this replica found past their deadline and removed (holders that stopped renewing).",
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_limited_total",
			Help: "Requests refused with 429 by the limit they hit (waiters, waiters_per_key, streams, streams_per_key, leases, rate), and connections closed at accept (connections).",
		}, []string{"limit"}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_open_connections",
			Help: "Client connections open on this replica.",
		}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockd_connections_accepted_total",
			Help: "Client connections accepted on this replica (not those closed at accept by --max-connections); an HTTP/2 client carries all its requests on one.",
		}),
		clockOffset: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_clock_offset_seconds",
			Help: "This replica's clock minus the backend's shared reference (the store's clock, or the median of the replicas'), last measured; absent on backends whose leases run on the store's clock.",
		}),
		clockUncertainty: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_clock_offset_uncertainty_seconds",
			Help: "How far lockd_clock_offset_seconds may be off either way (about half a round trip to the reference).",
		}),
	}
	bi := version.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "lockd_build_info",
		Help:        "Always 1; its labels say which lockd this is.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
	})
	build.Set(1)
	m.reg.MustRegister(build)
	m.reg.MustRegister(m.requests, m.acquires, m.sessions, m.held, m.waiters, m.streams, m.expired, m.limited, m.conns, m.accepted, m.clockOffset, m.clockUncertainty,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Expired is the backend hook (backend.Hooks.OnExpire).
func (m *Metrics) Expired(backend.Expiry) {
	m.expired.Inc()
}

// Bounds of lockd_held_locks: it is listed from the store at most every
// heldEvery, within heldTimeout, counting at most heldMax locks.
const (
	heldEvery   = 5 * time.Second
	heldTimeout = 3 * time.Second
	heldMax     = 10000
)

// heldLocks is lockd_held_locks: the store's own count, not one kept in
// this process, which drifted (leases that ran out unseen, other replicas'
// grants, restarts). A scrape lists the store's held locks (backend.List,
// which leaves out expired grants and removes nothing), so its cost is one
// List of the whole store per heldEvery per replica.
type heldLocks struct {
	desc *prometheus.Desc

	mu    sync.Mutex
	b     backend.Backend // set by New; nil: nothing to report
	at    time.Time       // when n and err were read
	n     int
	err   error
	fresh bool // n and err were read at all
}

func (h *heldLocks) use(b backend.Backend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.b, h.fresh = b, false
}

func (h *heldLocks) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *heldLocks) Collect(ch chan<- prometheus.Metric) {
	h.mu.Lock() // concurrent scrapes wait for one List
	defer h.mu.Unlock()
	if h.b == nil {
		return
	}
	if !h.fresh || time.Since(h.at) >= heldEvery {
		ctx, cancel := context.WithTimeout(context.Background(), heldTimeout)
		states, err := h.b.List(ctx, "", "", heldMax)
		cancel()
		h.n, h.err, h.at, h.fresh = len(states), err, time.Now(), true
	}
	if h.err != nil {
		return // absent rather than a stale or made-up number
	}
	ch <- prometheus.MustNewConstMetric(h.desc, prometheus.GaugeValue, float64(h.n))
}

// Registry is where the metrics live, for /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }
