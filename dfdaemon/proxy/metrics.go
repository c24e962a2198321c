package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Route labels of the proxy metrics.
const (
	routeP2P      = "p2p"      // GET served from the P2P network
	routeFallback = "fallback" // P2P failed before the first byte; forwarded directly
	routeDirect   = "direct"   // forwarded to the origin
	routeTunnel   = "tunnel"   // CONNECT relayed as TCP
	routeHijack   = "hijack"   // CONNECT intercepted
	routeRejected = "rejected" // answered 4xx by the proxy itself
)

// metrics are the proxy's Prometheus collectors:
// damselfly_proxy_requests_total{route},
// damselfly_proxy_bytes_total{route} (response bytes to clients; for
// tunnels, both directions) and damselfly_proxy_leaf_certs_issued_total.
type metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	certs    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "proxy", Name: "requests_total",
			Help: "Requests the forward proxy handled, by route: p2p, fallback, direct, tunnel, hijack, rejected.",
		}, []string{"route"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "proxy", Name: "bytes_total",
			Help: "Response body bytes sent to clients by route; for tunnels, bytes relayed both ways.",
		}, []string{"route"}),
		certs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "proxy", Name: "leaf_certs_issued_total",
			Help: "Leaf certificates signed for intercepted hosts.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.bytes, err = register(reg, m.bytes); err != nil {
		return nil, err
	}
	if m.certs, err = register(reg, m.certs); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the equal collector registered before,
// so that two proxies of one process may share a registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}
