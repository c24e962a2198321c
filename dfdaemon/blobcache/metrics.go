package blobcache

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	diskFree     prometheus.Gauge
	lost         prometheus.Counter
	scrubbed     prometheus.Counter
	corrupt      prometheus.Counter
	usage        prometheus.Gauge
	quota        prometheus.Gauge
	evictions    prometheus.Counter
	evictedBytes prometheus.Counter
	tasks        prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, c *Cache) (*metrics, error) {
	m := &metrics{
		diskFree: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "disk_free_bytes",
			Help: "Free bytes of the filesystem holding the cache, as of the last check.",
		}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "lost_total",
			Help: "Tasks dropped because their committed content was gone or failed verification when read.",
		}),
		scrubbed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "scrubbed_bytes_total",
			Help: "Bytes of committed content hashed again by the background scrub.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "scrub_corrupt_total",
			Help: "Blobs the background scrub found not matching their digest (removed).",
		}),
		usage: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "usage_bytes",
			Help: "Bytes of committed content in the node's store, as of the last check.",
		}),
		quota: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "quota_bytes",
			Help: "The configured cache quota.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "evictions_total",
			Help: "Blobs deleted to keep the store under its quota.",
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "evicted_bytes_total",
			Help: "Bytes deleted to keep the store under its quota.",
		}),
		tasks: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "dfdaemon_cache", Name: "tasks",
			Help: "Tasks the node holds: downloading, or offered to other peers.",
		}, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(len(c.tasks))
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.diskFree, m.lost, m.scrubbed, m.corrupt, m.usage, m.quota, m.evictions, m.evictedBytes, m.tasks} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("blobcache: register metrics: %w", err)
		}
	}
	return m, nil
}
