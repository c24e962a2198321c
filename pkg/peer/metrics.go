package peer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one Engine. Without a registerer they are kept but not
// exported.
type metrics struct {
	pieces    *prometheus.CounterVec
	failures  *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	downloads *prometheus.CounterVec
	fallbacks prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pieces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "peer", Name: "pieces_total",
			Help: "Piece fetches by result (ok, failed) and origin (peer, cdn).",
		}, []string{"result", "from"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "peer", Name: "piece_failures_total",
			Help: "Failed piece fetches by reason.",
		}, []string{"reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "peer", Name: "received_bytes_total",
			Help: "Verified bytes received by origin (peer, cdn, source).",
		}, []string{"from"}),
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "peer", Name: "downloads_total",
			Help: "Finished downloads by result (ok, failed) and mode (p2p, source, cached).",
		}, []string{"result", "mode"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "peer", Name: "source_fallbacks_total",
			Help: "Downloads that fell back to the source after P2P failed.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.pieces, m.failures, m.bytes, m.downloads, m.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
