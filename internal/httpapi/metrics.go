package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lockd/lockd/backend"
)

// Metrics are lockd's Prometheus metrics. Make them before the backend so
// that its hooks can count expiries (Expired).
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec
	acquires *prometheus.HistogramVec
	held     prometheus.Gauge
	waiters  prometheus.Gauge
	expired  prometheus.Counter
	limited  *prometheus.CounterVec
	conns    prometheus.Gauge

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
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_held_locks",
			Help: "Leases granted through this replica minus those released through it or seen expiring by it; sum over replicas for the service.",
		}),
		waiters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_waiters",
			Help: "Acquire long polls waiting on this replica.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockd_leases_expired_total",
			Help: "Grants this replica found past their deadline and removed (holders that stopped renewing).",
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_limited_total",
			Help: "Requests refused with 429 by the limit they hit (waiters, waiters_per_key, leases, rate), and connections closed at accept (connections).",
		}, []string{"limit"}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_open_connections",
			Help: "Client connections open on this replica.",
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
	m.reg.MustRegister(m.requests, m.acquires, m.held, m.waiters, m.expired, m.limited, m.conns, m.clockOffset, m.clockUncertainty,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Expired is the backend hook (backend.Hooks.OnExpire).
func (m *Metrics) Expired(backend.Expiry) {
	m.expired.Inc()
	m.held.Dec()
}

// Registry is where the metrics live, for /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }
