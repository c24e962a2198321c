// Package proxy is dfdaemon's HTTP(S) forward proxy: the handler behind a
// node's HTTP_PROXY. Each request in absolute form (GET http://host/path) is
// matched against URL rules; a GET that a rule sends through the P2P network
// is downloaded by a Fetcher and streamed to the client, anything else is
// forwarded to its origin. A CONNECT is a TCP tunnel, or, for the hosts the
// configuration lists, is intercepted: TLS is terminated with a leaf
// certificate signed by the user's CA, and the decrypted requests are routed
// by the same rules as https://host/path.
//
// Routing of one request:
//
//   - GET matching a rule with useP2P, without conditional headers:
//     Fetcher. If the fetch fails before the first byte the request is
//     forwarded directly (or answered 502 with disableFallback); after the
//     first byte a failure aborts the response, so the client sees a
//     truncated body, never a complete-looking one.
//   - such a GET with a plain Range (no If-Range): Fetcher.FetchRange, the
//     whole content's download with the range's pieces fetched first, and
//     the answer the mirror gives (httpx.Body): 206 with Content-Range and
//     its exact Content-Length, 206 multipart/byteranges for several
//     ranges, 416 with "Content-Range: bytes */size" when none is
//     satisfiable. A partial range goes out as soon as its pieces are
//     verified; an answer carrying the whole content waits for the whole
//     content's verification before its last bytes. A Range the proxy
//     cannot parse is forwarded directly, for the origin to judge.
//   - every other request: forwarded directly, hop-by-hop headers removed
//     (RFC 9110 §7.6.1), bodies streamed both ways.
//   - CONNECT: the port must be allowed (default 443 only), then tunnel or
//     intercept.
//
// The proxy never logs header values, query strings or user information.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/redact"
)

// Fetcher downloads a URL through the P2P network (dfdaemon implements it
// over the peer engine). body streams verified bytes in order; size is the
// content length, -1 when unknown. A failure after the first byte must
// surface as a Read error, never as an early io.EOF. header holds the
// client's end-to-end request headers (Authorization among them) for the
// source fetch.
//
// FetchRange downloads url the same way and returns the part a Range
// header value selects, resolved against the content's size (it waits for
// the size) and opened: an httpx.Body ready for SetHeader and WriteTo, whose
// Close releases the download. size is the content's size once known (-1
// before), also alongside an error wrapping httpx.ErrRangeUnsatisfiable.
// The same contract holds for the body's readers as for Fetch's body.
type Fetcher interface {
	Fetch(ctx context.Context, url string, header http.Header) (body io.ReadCloser, size int64, err error)
	FetchRange(ctx context.Context, url string, header http.Header, rangeHeader string) (body *httpx.Body, size int64, err error)
}

// Option configures a Proxy.
type Option func(*options)

type options struct {
	log       *zap.Logger
	transport http.RoundTripper
	reg       prometheus.Registerer
	rootCAs   *x509.CertPool
	resolve   Resolver
}

// WithLogger sets the logger (default: none).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithTransport replaces the transport of direct requests. The outbound
// policy, WithRootCAs and WithResolver do not apply to it; CONNECT tunnels
// still use the proxy's own dialer.
func WithTransport(rt http.RoundTripper) Option { return func(o *options) { o.transport = rt } }

// WithMetrics registers the proxy's metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option { return func(o *options) { o.reg = reg } }

// WithRootCAs sets the roots origin certificates are verified against on
// direct https requests (default: the system roots). Tests use it to trust
// their httptest origins.
func WithRootCAs(pool *x509.CertPool) Option { return func(o *options) { o.rootCAs = pool } }

// WithResolver replaces DNS for direct connections and tunnels, e.g. to
// resolve test host names to 127.0.0.1. The outbound policy still applies.
func WithResolver(r Resolver) Option { return func(o *options) { o.resolve = r } }

// viaPseudonym names the proxy in Via headers (RFC 9110 §7.6.3).
const viaPseudonym = "damselfly"

// RouteHeader is set on responses the proxy produced from the P2P network
// ("p2p") or forwarded after a P2P failure ("fallback").
const RouteHeader = "X-Damselfly-Route"

// Proxy is the forward proxy handler. It is safe for concurrent use.
type Proxy struct {
	cfg       Config
	fetcher   Fetcher
	rules     []rule
	hijack    []*regexp.Regexp
	certs     *certCache
	ports     map[int]bool
	dialer    *dialer
	transport *http.Transport // the proxy's own transport, nil with WithTransport
	direct    *httputil.ReverseProxy
	log       *zap.Logger
	// debugLog takes net/http's own error lines (client resets, TLS
	// handshake noise) at debug level.
	debugLog *log.Logger
	m        *metrics

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // hijacked client and tunnel connections
	closed bool
}

// rule is a compiled Rule.
type rule struct {
	re       *regexp.Regexp
	useP2P   bool
	redirect string
}

// New validates cfg (after ApplyDefaults) and builds a proxy that fetches
// P2P routes with f. f may be nil when no rule uses P2P.
func New(cfg Config, f Fetcher, opts ...Option) (*Proxy, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{log: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	m, err := newMetrics(o.reg)
	if err != nil {
		return nil, fmt.Errorf("proxy metrics: %w", err)
	}
	p := &Proxy{
		cfg:     cfg,
		fetcher: f,
		ports:   make(map[int]bool, len(cfg.ConnectPorts)),
		log:     o.log,
		m:       m,
		debugLog: func() *log.Logger {
			l, _ := zap.NewStdLogAt(o.log, zapcore.DebugLevel)
			return l
		}(),
		conns: make(map[net.Conn]struct{}),
	}
	for _, r := range cfg.Rules {
		p.rules = append(p.rules, rule{re: regexp.MustCompile(r.Regex), useP2P: r.UseP2P, redirect: r.Redirect})
		if r.UseP2P && f == nil {
			return nil, fmt.Errorf("proxy rule %q uses P2P but there is no fetcher: %w", r.Regex, ErrInvalid)
		}
	}
	for _, h := range cfg.Hijack.Hosts {
		p.hijack = append(p.hijack, regexp.MustCompile(h))
	}
	if len(p.hijack) > 0 {
		authority, err := loadCA(cfg.Hijack.CACert, cfg.Hijack.CAKey)
		if err != nil {
			return nil, fmt.Errorf("proxy hijack: %w", err)
		}
		p.certs = newCertCache(authority, cfg.Hijack.LeafValidity, cfg.Hijack.CertCacheSize, time.Now, m.certs.Inc)
	}
	for _, port := range cfg.ConnectPorts {
		p.ports[port] = true
	}
	policy, err := netpolicy.New(cfg.Outbound, netpolicy.WithHint("outbound.allow"))
	if err != nil {
		return nil, fmt.Errorf("proxy outbound: %w", err)
	}
	p.dialer = newDialer(policy, cfg.DialTimeout, o.resolve)
	rt := o.transport
	if rt == nil {
		p.transport = &http.Transport{
			Proxy:                 nil, // never chain to $HTTP_PROXY, which may be this proxy
			DialContext:           p.dialer.DialContext,
			TLSClientConfig:       &tls.Config{RootCAs: o.rootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   cfg.TLSHandshakeTimeout,
			ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
			ExpectContinueTimeout: time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConns:          100,
			MaxIdleConnsPerHost:   16,
			DisableCompression:    true, // pass Content-Encoding through untouched
			ForceAttemptHTTP2:     true,
		}
		rt = p.transport
	}
	p.direct = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      rt,
		FlushInterval:  -1, // stream every chunk as it arrives
		ModifyResponse: addVia,
		ErrorHandler:   p.directError,
		ErrorLog:       p.debugLog,
	}
	return p, nil
}

// IsProxyRequest reports whether r is addressed to a forward proxy: a
// CONNECT, or a request whose target is an absolute URL (RFC 9112 §3.2.2).
// dfdaemon's listener uses it to tell proxy requests from mirror requests.
func IsProxyRequest(r *http.Request) bool {
	return r.Method == http.MethodConnect || (r.URL != nil && r.URL.IsAbs() && !strings.HasPrefix(r.RequestURI, "/"))
}

// ServeHTTP handles one proxy request: CONNECT, or an absolute-form request
// of any method.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if headerSize(r) > int(p.cfg.MaxHeaderBytes) {
		p.reject(w, http.StatusRequestHeaderFieldsTooLarge, "request header too large")
		return
	}
	if r.Method == http.MethodConnect {
		p.serveConnect(w, r)
		return
	}
	u := r.URL
	if u == nil || !u.IsAbs() || u.Host == "" || u.Hostname() == "" {
		p.reject(w, http.StatusBadRequest, "not a proxy request: the target must be an absolute http(s) URL")
		return
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		p.reject(w, http.StatusBadRequest, "unsupported scheme "+u.Scheme)
		return
	}
	if u.User != nil {
		p.reject(w, http.StatusBadRequest, "user information in the URL is not supported")
		return
	}
	target := &url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host), Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}
	p.route(w, r, target)
}

// route sends one request with a known target URL through P2P or direct,
// as the first matching rule says.
func (p *Proxy) route(w http.ResponseWriter, r *http.Request, target *url.URL) {
	target, useP2P, err := p.match(target)
	if err != nil {
		p.log.Warn("proxy redirect rule produced a bad URL", zap.String("url", redact.URL(target.String())), zap.String("error", redact.Error(err)))
		p.reject(w, http.StatusBadGateway, "proxy redirect rule produced a bad URL")
		return
	}
	if useP2P && r.Method == http.MethodGet {
		switch p2pMode(r.Header) {
		case p2pWhole:
			p.serveP2P(w, r, target)
			return
		case p2pRange:
			p.serveP2PRange(w, r, target)
			return
		}
	}
	p.serveDirect(w, r, target, routeDirect)
}

// match applies the first rule matching u: whether to use P2P, and the URL
// after its redirect.
func (p *Proxy) match(u *url.URL) (*url.URL, bool, error) {
	s := u.String()
	for _, rl := range p.rules {
		if !rl.re.MatchString(s) {
			continue
		}
		switch {
		case rl.redirect == "":
			return u, rl.useP2P, nil
		case strings.Contains(rl.redirect, "://"):
			nu, err := url.Parse(rl.re.ReplaceAllString(s, rl.redirect))
			if err != nil {
				return u, false, err
			}
			if (nu.Scheme != "http" && nu.Scheme != "https") || nu.Hostname() == "" || nu.User != nil {
				return u, false, errors.New("redirect is not an absolute http(s) URL")
			}
			return nu, rl.useP2P, nil
		default:
			nu := *u
			nu.Host = strings.ToLower(rl.redirect)
			return &nu, rl.useP2P, nil
		}
	}
	return u, false, nil
}

// How a GET on a P2P rule is answered (p2pMode).
const (
	p2pDirect = iota // forwarded to the origin
	p2pWhole         // the whole content from the P2P network
	p2pRange         // ranges of the content from the P2P network
)

// p2pMode tells how a GET with header h on a P2P rule is answered.
// Conditional requests go direct, as Dragonfly does: the origin answers
// them cheaply and the P2P network has no validators to compare. A plain
// Range (one Range header that parses, no If-Range) is served from the P2P
// network; a Range that does not parse goes direct.
func p2pMode(h http.Header) int {
	for _, k := range []string{"If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		if _, ok := h[k]; ok {
			return p2pDirect
		}
	}
	vs, ok := h["Range"]
	if !ok {
		return p2pWhole
	}
	if len(vs) != 1 {
		return p2pDirect
	}
	if _, err := httpx.ParseRanges(vs[0], -1); errors.Is(err, httpx.ErrRangeMalformed) {
		return p2pDirect
	}
	return p2pRange
}

// copyBufSize is the unit the proxy reads and flushes P2P bodies in.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// serveP2P answers a GET from the Fetcher, streaming each chunk as it
// arrives.
func (p *Proxy) serveP2P(w http.ResponseWriter, r *http.Request, target *url.URL) {
	ctx := r.Context()
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp

	body, size, err := p.fetcher.Fetch(ctx, target.String(), fetchHeader(r.Header))
	if err == nil && body == nil {
		err = errors.New("fetcher returned no body")
	}
	var n int
	var rerr error
	if err == nil {
		defer body.Close()
		n, rerr = readSome(body, buf)
		switch {
		case n == 0 && errors.Is(rerr, io.EOF) && size > 0:
			err = fmt.Errorf("p2p body empty, expected %d bytes: %w", size, io.ErrUnexpectedEOF)
		case n == 0 && rerr != nil && !errors.Is(rerr, io.EOF):
			err = rerr
		}
	}
	if err != nil {
		p.p2pFailed(w, r, target, "p2p download", err)
		return
	}
	p.m.requests.WithLabelValues(routeP2P).Inc()
	p.log.Debug("proxy request", zap.String("route", routeP2P), zap.String("url", redact.URL(target.String())))

	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes") // a Range of this URL is served from P2P too
	h.Set(RouteHeader, routeP2P)
	h.Set("Via", "1.1 "+viaPseudonym)
	if size >= 0 {
		h.Set("Content-Length", fmt.Sprint(size))
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush() // the status goes out now, whatever is held back
	// The whole content: its last httpx.HoldBack bytes are written only
	// once the body has ended with io.EOF, which the Fetcher's reader
	// returns only after the whole digest is verified, so that a failure
	// there never follows a body that already looks complete.
	var sent, got int64
	var tail []byte // received, held back
	defer func() { p.m.bytes.WithLabelValues(routeP2P).Add(float64(sent)) }()
	write := func(b []byte) bool {
		if len(b) == 0 {
			return true
		}
		if _, werr := w.Write(b); werr != nil {
			return false // the client is gone
		}
		sent += int64(len(b))
		_ = rc.Flush()
		return true
	}
	for {
		if n > 0 {
			got += int64(n)
			if size >= 0 && got > size {
				p.abort(target, fmt.Errorf("p2p body longer than its size %d", size))
			}
			tail = append(tail, buf[:n]...)
			// Everything but the last HoldBack bytes of the content (when
			// its size is known) or of what came so far goes out now.
			keep := int64(httpx.HoldBack)
			if size >= 0 {
				keep = max(min(keep, size)-(size-got), 0)
			}
			if out := int64(len(tail)) - keep; out > 0 {
				if !write(tail[:out]) {
					return
				}
				tail = append(tail[:0], tail[out:]...)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			p.abort(target, rerr)
		}
		n, rerr = readSome(body, buf)
	}
	if size >= 0 && got != size {
		p.abort(target, fmt.Errorf("p2p body ended after %d of %d bytes", got, size))
	}
	write(tail)
}

// p2pFailed answers a P2P request that failed before its first byte: it is
// forwarded to the origin instead (marked as a fallback), or answered 502
// with disableFallback. A client that is gone gets nothing.
func (p *Proxy) p2pFailed(w http.ResponseWriter, r *http.Request, target *url.URL, what string, err error) {
	if r.Context().Err() != nil {
		return
	}
	if !p.cfg.DisableFallback {
		p.log.Warn(what+" failed, forwarding directly", zap.String("url", redact.URL(target.String())), zap.String("error", redact.Error(err)))
		w.Header().Set(RouteHeader, routeFallback)
		p.serveDirect(w, r, target, routeFallback)
		return
	}
	p.log.Warn(what+" failed", zap.String("url", redact.URL(target.String())), zap.String("error", redact.Error(err)))
	p.reject(w, http.StatusBadGateway, "peer-to-peer download failed")
}

// abort ends a response whose status is already sent without completing
// it: net/http closes the connection (or resets the stream), so the client
// sees a truncated body and never mistakes it for the whole content.
func (p *Proxy) abort(target *url.URL, err error) {
	p.log.Warn("p2p download failed mid-stream", zap.String("url", redact.URL(target.String())), zap.String("error", redact.Error(err)))
	panic(http.ErrAbortHandler)
}

// readSome reads until it gets at least one byte or an error, giving up on
// a reader that keeps returning nothing.
func readSome(r io.Reader, buf []byte) (int, error) {
	for range 100 {
		n, err := r.Read(buf)
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

type targetKey struct{}

// hopHeaders are the hop-by-hop fields of RFC 9110 §7.6.1, plus the
// proxy-only ones.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// fetchHeader returns the client's headers that matter to a source fetch of
// the whole content: end-to-end fields, without hop-by-hop ones, without
// Range (the P2P network downloads the whole content), without what
// describes this message's body or representation encoding (the P2P
// network stores the identity encoding), and without forwarding traces.
func fetchHeader(in http.Header) http.Header {
	h := in.Clone()
	for _, v := range in.Values("Connection") {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	for _, k := range []string{"Range", "Accept-Encoding", "Content-Length", "Expect", "Via", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		h.Del(k)
	}
	return h
}

// headerSize approximates the size of r's header section as received: the
// request line, Host and every field with its separators.
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	n += len("Host: ") + len(r.Host) + 2
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// countingWriter counts the response body bytes a handler writes.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Flush() { _ = http.NewResponseController(c.ResponseWriter).Flush() }

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
