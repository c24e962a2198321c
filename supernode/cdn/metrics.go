package cdn

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sourceBytes prometheus.Counter
	// demandFetches counts the demand requests by result; demandBytes the
	// bytes they read (counted in sourceBytes too).
	demandFetches *prometheus.CounterVec
	demandBytes   prometheus.Counter
	fetches       *prometheus.CounterVec
	cacheHits     prometheus.Counter
	contentGone   prometheus.Counter
	// sourcesGivenUp counts candidate sources abandoned for the next.
	sourcesGivenUp prometheus.Counter

	usage, quota, diskFree prometheus.Gauge
	evictions              prometheus.Counter
	// corrupt counts committed content found corrupt (or with wrong piece
	// metadata); corruptServes the uploads cut at a bad piece; reverified
	// the checks corrupt reports started; scrubbed the bytes scrubbed;
	// servedHashed the bytes uploads hashed before sending them.
	corrupt, corruptServes, reverified, scrubbed, servedHashed prometheus.Counter
}

// newMetrics builds the CDN's metrics and registers them with reg, when
// given.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sourceBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "source_bytes_total",
			Help: "Bytes read from sources, by fetch streams and by requests for demanded pieces.",
		}),
		demandFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "demand_fetches_total",
			Help: "Range requests for pieces demanded ahead of a source fetch, by result (succeeded, failed, unsupported: the source ignores ranges, cancelled: the fetch ended first).",
		}, []string{"result"}),
		demandBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "demand_bytes_total",
			Help: "Bytes read from sources by requests for demanded pieces (also counted in source_bytes_total).",
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
		usage: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "store_bytes",
			Help: "Bytes of committed content in the CDN's store.",
		}),
		quota: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "quota_bytes",
			Help: "cdn.quota (0: none, the free-space watermarks alone bound the store).",
		}),
		diskFree: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "disk_free_bytes",
			Help: "Free bytes on the data directory's filesystem, as last measured.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "evictions_total",
			Help: "Committed blobs evicted for the quota or the disk watermarks.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "corrupt_content_total",
			Help: "Committed blobs (or their piece metadata) found not to match; removed and fetched again.",
		}),
		corruptServes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "corrupt_uploads_cut_total",
			Help: "Piece uploads cut because the piece no longer matched its digest.",
		}),
		reverified: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "corrupt_reports_checked_total",
			Help: "Checks of committed content started by peers' corrupt reports against the CDN.",
		}),
		scrubbed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "scrubbed_bytes_total",
			Help: "Bytes of committed content hashed again by the scrub.",
		}),
		servedHashed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "cdn", Name: "upload_checked_bytes_total",
			Help: "Bytes of committed content hashed by uploads before they sent them (a piece once per file).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.sourceBytes, m.demandFetches, m.demandBytes, m.fetches, m.cacheHits, m.contentGone, m.sourcesGivenUp,
		m.usage, m.quota, m.diskFree, m.evictions, m.corrupt, m.corruptServes, m.reverified, m.scrubbed, m.servedHashed} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
