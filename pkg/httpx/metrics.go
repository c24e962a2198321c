package httpx

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Metrics holds the HTTP server metrics of one component:
// <namespace>_http_requests_total{handler,method,code},
// <namespace>_http_request_duration_seconds{handler} and
// <namespace>_http_response_bytes_total{handler}.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered). Collectors already registered under the same names are
// reused, so two servers of one process may share a registry.
func NewMetrics(reg prometheus.Registerer, namespace string) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Subsystem: "http",
			Name:      "requests_total",
			Help:      "HTTP requests served, by handler, method and status code.",
		}, []string{"handler", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Subsystem: "http",
			Name:      "request_duration_seconds",
			Help:      "Time to serve an HTTP request, until its last byte is written.",
			Buckets:   []float64{.001, .005, .025, .1, .25, 1, 2.5, 10, 30, 120},
		}, []string{"handler"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Subsystem: "http",
			Name:      "response_bytes_total",
			Help:      "Bytes of HTTP response bodies written, by handler.",
		}, []string{"handler"}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.duration = register(reg, m.duration)
		m.bytes = register(reg, m.bytes)
	}
	return m
}

// register registers c, or returns the equal collector registered before.
// Any other registration error is a programming error and panics, as
// prometheus.MustRegister does.
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

// knownMethods bounds the method label's values.
var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true,
	http.MethodOptions: true, http.MethodTrace: true,
}

// codeCounters are the request counters of one handler, by method and
// status, bound on first use and then read without a lock or a label
// lookup: a copy-on-write map.
type codeCounters struct {
	vec     *prometheus.CounterVec
	handler string
	mu      sync.Mutex // serialises additions
	m       atomic.Pointer[map[string]prometheus.Counter]
}

// counter returns the counter of method (unknown methods count as OTHER)
// and status.
func (c *codeCounters) counter(method string, status int) prometheus.Counter {
	if !knownMethods[method] {
		method = "OTHER"
	}
	var buf [24]byte
	key := strconv.AppendInt(append(append(buf[:0], method...), ' '), int64(status), 10)
	if m := c.m.Load(); m != nil {
		if ctr, ok := (*m)[string(key)]; ok {
			return ctr
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	next := map[string]prometheus.Counter{}
	if m := c.m.Load(); m != nil {
		for k, v := range *m {
			next[k] = v
		}
	}
	ctr := c.vec.WithLabelValues(c.handler, method, strconv.Itoa(status))
	next[string(key)] = ctr
	c.m.Store(&next)
	return ctr
}

// Instrument wraps h so that every request is counted and timed under the
// handler label, and logged at debug level by log (nil: not logged). The log
// line carries the method, path, status, bytes and duration, never headers
// or the query string, which can carry credentials. m may be nil, to log
// only.
func (m *Metrics) Instrument(handler string, h http.Handler, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	// The handler's children are bound once: a request looks no label up.
	var (
		codes    *codeCounters
		duration prometheus.Observer
		written  prometheus.Counter
	)
	if m != nil {
		codes = &codeCounters{vec: m.requests, handler: handler}
		duration = m.duration.WithLabelValues(handler)
		written = m.bytes.WithLabelValues(handler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		defer func() {
			status := rec.status
			if status == 0 {
				// Nothing written: net/http answers 200, unless the handler
				// panicked, in which case the connection is dropped.
				status = http.StatusOK
			}
			d := time.Since(start)
			if m != nil {
				codes.counter(r.Method, status).Inc()
				duration.Observe(d.Seconds())
				written.Add(float64(rec.bytes))
			}
			if ce := log.Check(zap.DebugLevel, "http request"); ce != nil {
				ce.Write(
					zap.String("handler", handler),
					zap.String("method", r.Method),
					zap.String("path", r.URL.Path),
					zap.Int("status", status),
					zap.Int64("bytes", rec.bytes),
					zap.Duration("duration", d),
				)
			}
		}()
		h.ServeHTTP(rec, r)
	})
}

// recorder captures the status and body size of a response. It passes
// Flush, Hijack and ReadFrom through, and Unwrap serves
// http.ResponseController.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{r.ResponseWriter}, src)
	}
	r.bytes += n
	return n, err
}

func (r *recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if r.status == 0 {
		r.status = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(r.ResponseWriter).Hijack()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// WriteJSON writes v as a JSON response with the given status. If v cannot
// be encoded the response is a 500 with a plain-text body instead.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
