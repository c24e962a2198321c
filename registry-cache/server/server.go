// Package server is the registry-cache's /v2/ surface: pkg/registryapi's
// read front in front of one upstream registry (registryapi.Fixed), with
// manifests served through pkg/manifestcache and blobs passed through
// (registryapi.PassThrough). Every answer, and every error, is the front's:
// dfdaemon's mirror answers the same requests the same way, with blobs
// moved peer to peer instead.
package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registryapi"
)

// Option configures a Server.
type Option func(*options)

type options struct {
	hc    *http.Client
	log   *zap.Logger
	httpm *httpx.Metrics
}

// WithHTTPClient sets the client that passes requests through to the
// upstream (default: registryapi.DefaultHTTPClient). Its redirect policy
// applies to blob redirects.
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithHTTPMetrics instruments Handler with m, under the handler label
// "registry".
func WithHTTPMetrics(m *httpx.Metrics) Option { return func(o *options) { o.httpm = m } }

// Server serves the /v2/ read API of one upstream. It is safe for
// concurrent use.
type Server struct {
	front *registryapi.Front
	log   *zap.Logger
	httpm *httpx.Metrics
}

// New returns a server answering manifests from c and passing blobs, tag
// lists and /v2/ through to upstream (scheme://host[:port]).
func New(c *manifestcache.Cache, upstream *url.URL, opts ...Option) (*Server, error) {
	if c == nil {
		return nil, errors.New("server: nil cache")
	}
	ups, err := registryapi.NewFixed(upstream)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	o := options{log: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.hc == nil {
		o.hc = registryapi.DefaultHTTPClient()
	}
	front, err := registryapi.New(c, ups, registryapi.NewPassThrough(o.hc, o.log),
		registryapi.WithHTTPClient(o.hc), registryapi.WithLogger(o.log))
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return &Server{front: front, log: o.log, httpm: o.httpm}, nil
}

// Handler returns the /v2/ surface, instrumented when WithHTTPMetrics was
// given.
func (s *Server) Handler() http.Handler {
	var h http.Handler = s.front
	if s.httpm != nil {
		h = s.httpm.Instrument("registry", h, s.log)
	}
	return h
}

// ServeHTTP serves the /v2/ API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.front.ServeHTTP(w, r) }
