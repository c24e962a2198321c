package command

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly/damselfly/pkg/httpx"
)

// The bounds of every daemon's HTTP server. There is no ReadTimeout or
// WriteTimeout: blob streams, long polls, piece uploads and tunnels outlive
// any fixed bound (a ReadTimeout would even cancel the request context of a
// long upload); request bodies are bounded by the handlers.
const (
	// ShutdownTimeout is how long requests in flight get to finish once the
	// daemon's context ends, before their connections are closed.
	ShutdownTimeout   = 10 * time.Second
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	// DefaultMaxHeaderBytes bounds a request's header block.
	DefaultMaxHeaderBytes = 64 << 10
)

// Daemon is the skeleton the long-running binaries (supernode, dfdaemon,
// registry-cache) share: a Prometheus registry holding the Go and process
// collectors, a mux answering GET /healthz and GET /metrics, one HTTP
// server, and Run, which serves it beside the daemon's components until the
// context ends. Each binary's cmd adds its own handlers to Mux and its
// components to Run.
type Daemon struct {
	// Registry is the daemon's own registry: nothing is global, so tests
	// run many daemons in one process.
	Registry *prometheus.Registry
	// Mux serves /healthz and /metrics; the binary adds its routes.
	Mux *http.ServeMux

	log *zap.Logger
}

// NewDaemon returns the skeleton of a daemon logging to logger.
func NewDaemon(logger *zap.Logger) *Daemon {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return &Daemon{Registry: reg, Mux: mux, log: logger}
}

// Server returns the daemon's HTTP server for h (nil: Mux): bounded header
// read, idle connections and header size (DefaultMaxHeaderBytes; the caller
// may change it before Run), errors logged by the daemon's logger.
func (d *Daemon) Server(h http.Handler) *http.Server {
	if h == nil {
		h = d.Mux
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(d.log.Named("http")),
	}
}

// Run serves srv on ln and runs each component until ctx ends or one of
// them fails; srv is then shut down within ShutdownTimeout. It returns the
// first error, nil after a clean stop.
func (d *Daemon) Run(ctx context.Context, srv *http.Server, ln net.Listener, components ...func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, run := range components {
		g.Go(func() error { return run(gctx) })
	}
	g.Go(func() error { return httpx.Serve(gctx, srv, ln, ShutdownTimeout) })
	return g.Wait()
}

// CheckHostPort validates a host:port config value. When listen is true
// the host may be empty (all interfaces) and the port 0 (any free port);
// an address to dial needs both.
func CheckHostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: must be host:port", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 || (p == 0 && !listen) {
		return fmt.Errorf("%q: bad port %q", addr, port)
	}
	if !listen && host == "" {
		return fmt.Errorf("%q: no host", addr)
	}
	return nil
}
