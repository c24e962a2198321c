package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/redact"
)

// established is the answer to an accepted CONNECT.
const established = "HTTP/1.1 200 Connection established\r\n\r\n"

// serveConnect handles CONNECT host:port: a TCP tunnel, or an intercepted
// TLS session for the hosts of Hijack.Hosts.
func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 {
		p.reject(w, http.StatusHTTPVersionNotSupported, "CONNECT is supported over HTTP/1.1 only")
		return
	}
	authority := r.Host
	if authority == "" && r.URL != nil {
		authority = r.URL.Host
	}
	host, portStr, err := net.SplitHostPort(authority)
	if err != nil || host == "" || strings.ContainsAny(host, "/@ ") {
		p.reject(w, http.StatusBadRequest, "CONNECT target must be host:port")
		return
	}
	port, err := parsePort(portStr)
	if err != nil || port == 0 {
		p.reject(w, http.StatusBadRequest, "CONNECT target must be host:port")
		return
	}
	if !p.ports[port] {
		p.reject(w, http.StatusForbidden, "CONNECT to port "+portStr+" is not allowed")
		return
	}
	if p.isClosed() {
		p.reject(w, http.StatusServiceUnavailable, "proxy is shutting down")
		return
	}
	host = strings.ToLower(host)
	if p.intercepts(host) {
		p.intercept(w, r, host, port)
		return
	}
	p.tunnel(w, r, net.JoinHostPort(host, portStr))
}

// intercepts reports whether CONNECTs to host are intercepted.
func (p *Proxy) intercepts(host string) bool {
	for _, re := range p.hijack {
		if re.MatchString(host) {
			return true
		}
	}
	return false
}

// tunnel relays bytes between the client and addr until either side ends,
// the tunnel is idle for TunnelIdleTimeout, the request context ends or the
// proxy is closed.
func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request, addr string) {
	ctx := r.Context()
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	upstream, err := p.dialer.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		status, msg := dialStatus(err)
		p.log.Warn("proxy: CONNECT dial failed", zap.String("addr", addr), zap.Int("status", status), zap.String("error", redact.Error(err)))
		p.m.requests.WithLabelValues(routeTunnel).Inc()
		http.Error(w, msg, status)
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		_ = upstream.Close()
		p.log.Warn("proxy: cannot take over the CONNECT connection", zap.Error(err))
		http.Error(w, "cannot take over the connection", http.StatusInternalServerError)
		return
	}
	_ = client.SetDeadline(time.Time{}) // the server's deadlines do not apply to a tunnel
	p.m.requests.WithLabelValues(routeTunnel).Inc()
	if !p.track(client, upstream) {
		_ = client.Close()
		_ = upstream.Close()
		return
	}
	defer p.untrack(client, upstream)
	_ = client.SetWriteDeadline(time.Now().Add(p.cfg.TunnelIdleTimeout))
	if _, err := client.Write([]byte(established)); err != nil {
		_ = client.Close()
		_ = upstream.Close()
		return
	}
	p.log.Debug("proxy request", zap.String("route", routeTunnel), zap.String("addr", addr))
	n := p.pipe(ctx, withBuffered(client, brw), upstream)
	p.m.bytes.WithLabelValues(routeTunnel).Add(float64(n))
}

// pipe copies a to b and b to a. When either direction ends, ctx ends, or
// no byte has moved either way for TunnelIdleTimeout, both connections are
// closed. It returns the bytes relayed.
func (p *Proxy) pipe(ctx context.Context, a, b net.Conn) int64 {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	idle := p.cfg.TunnelIdleTimeout
	extend := func() {
		dl := time.Now().Add(idle)
		_ = a.SetReadDeadline(dl)
		_ = b.SetReadDeadline(dl)
	}
	extend()
	var total atomic.Int64
	var wg sync.WaitGroup
	relay := func(dst, src net.Conn) {
		defer wg.Done()
		defer closeBoth()
		bufp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bufp)
		buf := *bufp
		for {
			n, err := src.Read(buf)
			if n > 0 {
				extend()
				_ = dst.SetWriteDeadline(time.Now().Add(idle))
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
				total.Add(int64(n))
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go relay(b, a)
	go relay(a, b)
	wg.Wait()
	return total.Load()
}

// intercept terminates the client's TLS with a leaf certificate for host
// and serves the decrypted HTTP/1.1 requests through the rules, as
// https://host[:port]/path.
func (p *Proxy) intercept(w http.ResponseWriter, r *http.Request, host string, port int) {
	ctx := r.Context()
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.log.Warn("proxy: cannot take over the CONNECT connection", zap.Error(err))
		http.Error(w, "cannot take over the connection", http.StatusInternalServerError)
		return
	}
	if !p.track(client) {
		_ = client.Close()
		return
	}
	defer p.untrack(client)
	defer client.Close()
	_ = client.SetDeadline(time.Time{}) // the server's deadlines do not apply here
	_ = client.SetWriteDeadline(time.Now().Add(p.cfg.TLSHandshakeTimeout))
	if _, err := client.Write([]byte(established)); err != nil {
		return
	}
	_ = client.SetWriteDeadline(time.Time{})

	tconn := tls.Server(withBuffered(client, brw), &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		// The certificate always names the CONNECT host, whatever the SNI
		// says: the decrypted requests go to that host, so a client asking
		// for another name must fail verification.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.certs.get(host) },
	})
	hctx, cancel := context.WithTimeout(ctx, p.cfg.TLSHandshakeTimeout)
	err = tconn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		p.log.Debug("proxy: intercepted TLS handshake failed", zap.String("host", host), zap.Error(err))
		p.m.requests.WithLabelValues(routeRejected).Inc()
		return
	}
	p.m.requests.WithLabelValues(routeHijack).Inc()
	p.log.Debug("proxy request", zap.String("route", routeHijack), zap.String("host", host))

	authority := host
	if strings.Contains(host, ":") {
		authority = "[" + host + "]"
	}
	if port != 443 {
		authority = net.JoinHostPort(host, strconv.Itoa(port))
	}
	ln := newConnListener(tconn)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.serveIntercepted(w, r, authority)
		}),
		ReadHeaderTimeout: p.cfg.ReadHeaderTimeout,
		IdleTimeout:       p.cfg.TunnelIdleTimeout,
		MaxHeaderBytes:    int(p.cfg.MaxHeaderBytes),
		ErrorLog:          p.debugLog,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				_ = ln.Close()
			}
		},
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	_ = srv.Serve(ln)
}

// serveIntercepted routes one decrypted request of an intercepted tunnel.
// The destination is always the CONNECT authority; the request's own Host
// field does not redirect it.
func (p *Proxy) serveIntercepted(w http.ResponseWriter, r *http.Request, authority string) {
	if headerSize(r) > int(p.cfg.MaxHeaderBytes) {
		p.reject(w, http.StatusRequestHeaderFieldsTooLarge, "request header too large")
		return
	}
	if r.Method == http.MethodConnect {
		p.reject(w, http.StatusMethodNotAllowed, "CONNECT inside an intercepted tunnel")
		return
	}
	if r.URL == nil || r.RequestURI == "*" {
		p.reject(w, http.StatusBadRequest, "malformed request target")
		return
	}
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	target := &url.URL{Scheme: "https", Host: authority, Path: path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	p.route(w, r, target)
}

// bufferedConn is a hijacked connection whose first bytes may already sit
// in the server's read buffer.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// withBuffered returns c, reading first what brw has buffered.
func withBuffered(c net.Conn, brw *bufio.ReadWriter) net.Conn {
	if brw != nil && brw.Reader.Buffered() > 0 {
		return &bufferedConn{Conn: c, r: brw.Reader}
	}
	return c
}

// connListener is a net.Listener that hands out one connection, then blocks
// until closed.
type connListener struct {
	conn   net.Conn
	mu     sync.Mutex
	taken  bool
	done   chan struct{}
	closed sync.Once
}

func newConnListener(c net.Conn) *connListener {
	return &connListener{conn: c, done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.taken {
		l.taken = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	<-l.done
	return nil, net.ErrClosed
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.conn.LocalAddr() }
