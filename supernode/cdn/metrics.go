package cdn

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sourceBytes prometheus.Counter
	fetches     *prometheus.CounterVec
	cacheHits   prometheus.Counter
	contentGone prometheus.Counter
	// sourcesGivenUp counts candidate sources abandoned for the next.
	sourcesGivenUp prometheus.Counter
}

// newMetrics builds the CDN's metrics and registers them with reg, when
// given.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sourceBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "source_bytes_total",
			Help: "Bytes read from sources.",
		}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "tasks_fetched_total",
			Help: "Source fetches by result (succeeded, failed).",
		}, []string{"result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "cache_hits_total",
			Help: "Tasks served from cached content without a source fetch.",
		}),
		contentGone: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "content_gone_total",
			Help: "Succeeded tasks dropped because their content vanished from the store; they are fetched again.",
		}),
		sourcesGivenUp: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "sources_given_up_total",
			Help: "Sources a fetch gave up (failed, lied about the size, too slow) to try the next candidate.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.sourceBytes, m.fetches, m.cacheHits, m.contentGone, m.sourcesGivenUp} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
