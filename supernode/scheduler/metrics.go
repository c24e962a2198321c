package scheduler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// metrics are the scheduler's Prometheus collectors. They are always built,
// and registered only when a Registerer is given.
type metrics struct {
	tasks       *prometheus.GaugeVec
	peers       prometheus.Gauge
	inflight    prometheus.Gauge
	assignments *prometheus.CounterVec
	results     *prometheus.CounterVec
	strikes     *prometheus.CounterVec
	struck      prometheus.Counter
	demanded    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "damselfly", "scheduler"
	m := &metrics{
		tasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "tasks",
			Help: "Tasks known to the scheduler, by state.",
		}, []string{"state"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "peers",
			Help: "Peers known to the scheduler.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "assignments_in_flight",
			Help: "Piece assignments handed out and not yet reported, timed out or cancelled.",
		}),
		assignments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "assignments_total",
			Help: "Piece assignments handed out, by source kind (cdn or peer).",
		}, []string{"source"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "piece_results_total",
			Help: "Piece results reported by peers, by result (ok or failed).",
		}, []string{"result"}),
		strikes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "strikes_total",
			Help: "Failed transfers counted against a source peer, by kind (transfer, missing, integrity).",
		}, []string{"kind"}),
		struck: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "struck_out_total",
			Help: "Times a peer was struck out as a source of a task.",
		}),
		demanded: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "demanded_pieces_total",
			Help: "Pieces that polls wanted first while the task did not have them yet, handed to the CDN to fetch first (counted per poll).",
		}),
	}
	for _, s := range []schedapi.TaskState{schedapi.TaskRunning, schedapi.TaskSucceeded, schedapi.TaskFailed} {
		m.tasks.WithLabelValues(string(s))
	}
	for _, s := range []string{"cdn", "peer"} {
		m.assignments.WithLabelValues(s)
	}
	for _, s := range []string{"ok", "failed"} {
		m.results.WithLabelValues(s)
	}
	for _, k := range []failureKind{failTransfer, failMissing, failIntegrity} {
		m.strikes.WithLabelValues(k.String())
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.tasks, m.peers, m.inflight, m.assignments, m.results, m.strikes, m.struck, m.demanded} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register scheduler metrics: %w", err)
		}
	}
	return m, nil
}

// taskState moves one task from state from to state to; "" is none.
func (m *metrics) taskState(from, to schedapi.TaskState) {
	if from != "" {
		m.tasks.WithLabelValues(string(from)).Dec()
	}
	if to != "" {
		m.tasks.WithLabelValues(string(to)).Inc()
	}
}

func (m *metrics) assigned(cdn bool) {
	if cdn {
		m.assignments.WithLabelValues("cdn").Inc()
	} else {
		m.assignments.WithLabelValues("peer").Inc()
	}
}

func (m *metrics) result(ok bool) {
	if ok {
		m.results.WithLabelValues("ok").Inc()
	} else {
		m.results.WithLabelValues("failed").Inc()
	}
}

func (m *metrics) strike(k failureKind) { m.strikes.WithLabelValues(k.String()).Inc() }

func (m *metrics) struckOut() { m.struck.Inc() }

// observe sets the gauges that follow the size of the state.
func (m *metrics) observe(st *state) {
	m.peers.Set(float64(len(st.peers)))
	m.inflight.Set(float64(st.assignments))
}

func (k failureKind) String() string {
	switch k {
	case failMissing:
		return "missing"
	case failIntegrity:
		return "integrity"
	case failRequester:
		return "requester"
	default:
		return "transfer"
	}
}
