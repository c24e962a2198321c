package manifestcache

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cache's Prometheus collectors, all under
// damselfly_registry_cache_.
type metrics struct {
	hits        *prometheus.CounterVec // kind
	misses      *prometheus.CounterVec // kind
	upstream    *prometheus.CounterVec // method, result
	stale       *prometheus.CounterVec // kind
	negative    *prometheus.CounterVec // kind
	evictions   prometheus.Counter
	bytes       prometheus.Gauge
	manifests   prometheus.Gauge
	entries     prometheus.Gauge
	uncacheable prometheus.Counter

	// Children bound once, so that a cache hit looks no label up.
	hitTag, hitDigest           prometheus.Counter
	missTag, missDigest         prometheus.Counter
	negativeTag, negativeDigest prometheus.Counter
	staleTag, staleDigest       prometheus.Counter
}

// Label values.
const (
	kindTag    = "tag"
	kindDigest = "digest"

	resultOK       = "ok"
	resultNotFound = "not_found"
	resultDenied   = "denied"
	resultError    = "error"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "damselfly", "registry_cache"
	counterVec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	m := &metrics{
		hits:     counterVec("hits_total", "Manifest requests answered from the cache, by reference kind (tag, digest).", "kind"),
		misses:   counterVec("misses_total", "Manifest requests that had to ask the upstream, by reference kind.", "kind"),
		upstream: counterVec("upstream_requests_total", "Requests made to upstream registries, by method (GET, HEAD) and result (ok, not_found, denied, error).", "method", "result"),
		stale:    counterVec("stale_serves_total", "Manifests served past their TTL because the upstream failed, by reference kind.", "kind"),
		negative: counterVec("negative_hits_total", "Requests answered 404 from a remembered upstream 404, by reference kind.", "kind"),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "evictions_total",
			Help: "Manifest bodies evicted to stay within maxBytes."}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "bytes",
			Help: "Bytes of manifest bodies cached."}),
		manifests: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "manifests",
			Help: "Manifest bodies cached."}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "entries",
			Help: "Tag resolutions, remembered 404s and read permissions cached."}),
		uncacheable: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "uncacheable_total",
			Help: "Manifests served but not cached because they are larger than maxBytes."}),
	}
	if reg != nil {
		m.hits = register(reg, m.hits)
		m.misses = register(reg, m.misses)
		m.upstream = register(reg, m.upstream)
		m.stale = register(reg, m.stale)
		m.negative = register(reg, m.negative)
		m.evictions = register(reg, m.evictions)
		m.bytes = register(reg, m.bytes)
		m.manifests = register(reg, m.manifests)
		m.entries = register(reg, m.entries)
		m.uncacheable = register(reg, m.uncacheable)
	}
	m.hitTag, m.hitDigest = m.hits.WithLabelValues(kindTag), m.hits.WithLabelValues(kindDigest)
	m.missTag, m.missDigest = m.misses.WithLabelValues(kindTag), m.misses.WithLabelValues(kindDigest)
	m.negativeTag, m.negativeDigest = m.negative.WithLabelValues(kindTag), m.negative.WithLabelValues(kindDigest)
	m.staleTag, m.staleDigest = m.stale.WithLabelValues(kindTag), m.stale.WithLabelValues(kindDigest)
	return m
}

// register registers c, or returns the equal collector registered before, so
// that two caches of one process may share a registry. Any other
// registration error is a programming error and panics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(err)
}
