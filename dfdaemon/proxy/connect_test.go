package proxy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hijackBed is an HTTPS origin answering as p2p.test, other.test and
// 127.0.0.1 with a certificate from its own CA, and a proxy that intercepts
// p2p.test and 127.0.0.1 with another CA.
type hijackBed struct {
	originCA, proxyCA *testCA
	origin            *origin
	fetcher           *memFetcher
	proxy             *Proxy
	proxyURL          *url.URL
	reg               *prometheus.Registry
}

func newHijackBed(t *testing.T, opts ...Option) *hijackBed {
	t.Helper()
	b := &hijackBed{originCA: newTestCA(t, "origin CA"), proxyCA: newTestCA(t, "damselfly test CA"), reg: prometheus.NewRegistry()}
	b.origin = newTLSOrigin(t, b.originCA.serverCert(t, "p2p.test", "other.test", "127.0.0.1"))
	port := b.origin.Port()
	b.fetcher = newMemFetcher(map[string][]byte{
		"https://p2p.test:" + port + "/blob/h":  []byte("hijacked and served by peers"),
		"https://127.0.0.1:" + port + "/blob/i": []byte("hijacked by IP"),
	})
	cfg := Config{
		Rules:        []Rule{blobRule},
		ConnectPorts: []int{b.origin.PortNumber(t)},
		Hijack: HijackConfig{
			CACert: b.proxyCA.certFile,
			CAKey:  b.proxyCA.keyFile,
			Hosts:  []string{`^p2p\.test$`, `^127\.0\.0\.1$`},
		},
	}
	opts = append([]Option{WithRootCAs(b.originCA.pool), WithMetrics(b.reg)}, opts...)
	b.proxy, b.proxyURL = startProxy(t, cfg, b.fetcher, opts...)
	return b
}

func TestConnectTunnelToNonHijackedHost(t *testing.T) {
	t.Parallel()
	b := newHijackBed(t)
	c := proxyClient(t, b.proxyURL, b.originCA.pool)
	resp, body := get(t, c, "https://other.test:"+b.origin.Port()+"/blob/t", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, blobBody("/blob/t"), body)
	require.Equal(t, 1, b.origin.Hits("/blob/t"), "a tunnelled request reaches the origin even if a P2P rule would match")
	require.Empty(t, b.fetcher.Calls())
	require.Equal(t, "origin CA", resp.TLS.PeerCertificates[0].Issuer.CommonName, "the client sees the origin's own certificate")
	require.Equal(t, 1.0, counterValue(t, b.reg, "damselfly_proxy_requests_total", "route", "tunnel"))
}

func TestConnectTunnelWithHTTPTestCertificate(t *testing.T) {
	t.Parallel()
	o := httptestTLS(t)
	_, pu := startProxy(t, Config{ConnectPorts: []int{o.PortNumber(t)}}, nil)
	pool := x509.NewCertPool()
	pool.AddCert(o.Certificate())
	resp, body := get(t, proxyClient(t, pu, pool), o.URL+"/plain", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, blobBody("/plain"), body)
	require.True(t, resp.TLS.PeerCertificates[0].Equal(o.Certificate()))
}

func TestHijack(t *testing.T) {
	t.Parallel()
	b := newHijackBed(t)
	port := b.origin.Port()
	c := proxyClient(t, b.proxyURL, b.proxyCA.pool)

	t.Run("P2P rule served from the fetcher", func(t *testing.T) {
		resp, body := get(t, c, "https://p2p.test:"+port+"/blob/h", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "hijacked and served by peers", string(body))
		require.Equal(t, 0, b.origin.Hits("/blob/h"))
		leaf := resp.TLS.PeerCertificates[0]
		require.Equal(t, "damselfly test CA", leaf.Issuer.CommonName)
		require.Equal(t, []string{"p2p.test"}, leaf.DNSNames)
		pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
		require.True(t, ok)
		require.Equal(t, elliptic.P256(), pub.Curve)
		require.LessOrEqual(t, leaf.NotAfter.Sub(time.Now()), DefaultLeafValidity)
		require.Equal(t, "https://p2p.test:"+port+"/blob/h", b.fetcher.Calls()[0].url)
		require.Equal(t, "http/1.1", resp.TLS.NegotiatedProtocol)
	})
	t.Run("other paths go to the origin over verified TLS", func(t *testing.T) {
		resp, body := get(t, c, "https://p2p.test:"+port+"/direct?q=1", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, blobBody("/direct"), body)
		require.Equal(t, 1, b.origin.Hits("/direct"))
		require.Equal(t, "damselfly test CA", resp.TLS.PeerCertificates[0].Issuer.CommonName)
	})
	t.Run("a host named by IP gets an IP certificate", func(t *testing.T) {
		resp, body := get(t, c, "https://127.0.0.1:"+port+"/blob/i", nil)
		require.Equal(t, "hijacked by IP", string(body))
		require.Equal(t, "127.0.0.1", resp.TLS.PeerCertificates[0].IPAddresses[0].String())
		require.Equal(t, 0, b.origin.Hits("/blob/i"))
	})
	t.Run("requests on one intercepted connection share it", func(t *testing.T) {
		before := counterValue(t, b.reg, "damselfly_proxy_requests_total", "route", "hijack")
		c := proxyClient(t, b.proxyURL, b.proxyCA.pool)
		for range 3 {
			resp, _ := get(t, c, "https://p2p.test:"+port+"/keepalive", nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
		require.Equal(t, before+1, counterValue(t, b.reg, "damselfly_proxy_requests_total", "route", "hijack"))
		require.Equal(t, 3, b.origin.Hits("/keepalive"))
	})
	t.Run("a client not trusting the CA refuses the interception", func(t *testing.T) {
		c := proxyClient(t, b.proxyURL, b.originCA.pool)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://p2p.test:"+port+"/refused", nil)
		require.NoError(t, err)
		_, err = c.Do(req)
		var uerr x509.UnknownAuthorityError
		require.ErrorAs(t, err, &uerr)
		require.Equal(t, 0, b.origin.Hits("/refused"))
	})
	require.Equal(t, 2.0, counterValue(t, b.reg, "damselfly_proxy_leaf_certs_issued_total", "", ""), "one leaf per host")
}

func TestHijackDirectVerifiesOrigin(t *testing.T) {
	t.Parallel()
	// Without WithRootCAs the proxy does not trust the origin's CA: the
	// intercepted request must fail rather than reach an unverified host.
	originCA, proxyCA := newTestCA(t, "origin CA"), newTestCA(t, "damselfly test CA")
	o := newTLSOrigin(t, originCA.serverCert(t, "p2p.test"))
	cfg := Config{
		ConnectPorts: []int{o.PortNumber(t)},
		Hijack:       HijackConfig{CACert: proxyCA.certFile, CAKey: proxyCA.keyFile, Hosts: []string{`^p2p\.test$`}},
	}
	_, pu := startProxy(t, cfg, nil)
	resp, body := get(t, proxyClient(t, pu, proxyCA.pool), "https://p2p.test:"+o.Port()+"/x", nil)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, string(body))
	require.Equal(t, 0, o.Hits("/x"))
}

func TestHijackRejectsOversizedAndMalformed(t *testing.T) {
	t.Parallel()
	b := newHijackBed(t)
	conn := connectTLS(t, b, "p2p.test:"+b.origin.Port())
	_, err := fmt.Fprintf(conn, "GET /big HTTP/1.1\r\nHost: p2p.test\r\nX-Big: %s\r\n\r\n", strings.Repeat("b", DefaultMaxHeaderBytes+5000))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)

	conn = connectTLS(t, b, "p2p.test:"+b.origin.Port())
	_, err = io.WriteString(conn, "NOT A REQUEST\r\n\r\n")
	require.NoError(t, err)
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Equal(t, 0, b.origin.Hits("/big"))
}

// connectTLS opens an intercepted connection to authority through the
// bed's proxy and completes the TLS handshake trusting the proxy's CA.
func connectTLS(t *testing.T, b *hijackBed, authority string) *tls.Conn {
	t.Helper()
	raw, err := net.DialTimeout("tcp", b.proxyURL.Host, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })
	require.NoError(t, raw.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = fmt.Fprintf(raw, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	require.NoError(t, err)
	line, err := readLine(raw)
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1 200 Connection established", line)
	blank, err := readLine(raw)
	require.NoError(t, err)
	require.Empty(t, blank)
	host, _, _ := net.SplitHostPort(authority)
	conn := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: b.proxyCA.pool})
	require.NoError(t, conn.HandshakeContext(t.Context()))
	return conn
}

// echoServer accepts TCP connections on 127.0.0.1 and echoes what it
// reads until the peer closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// openTunnel sends CONNECT addr through the proxy and returns the tunnel.
func openTunnel(t *testing.T, proxyHost, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyHost, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	// The first bytes ride in the same write as the CONNECT, as eager
	// clients send them: they must not be lost in the proxy's read buffer.
	_, err = fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nearly", addr, addr)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	line, err := readLine(c)
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1 200 Connection established", line)
	blank, err := readLine(c)
	require.NoError(t, err)
	require.Empty(t, blank)
	got := make([]byte, len("early"))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, "early", string(got))
	return c
}

func TestTunnelIdleTimeout(t *testing.T) {
	t.Parallel()
	echo := echoServer(t)
	_, port, _ := net.SplitHostPort(echo)
	portN, err := parsePort(port)
	require.NoError(t, err)
	const idle = 500 * time.Millisecond
	_, pu := startProxy(t, Config{ConnectPorts: []int{portN}, TunnelIdleTimeout: idle}, nil)
	c := openTunnel(t, pu.Host, echo)

	// Traffic keeps the tunnel open well past the idle timeout.
	buf := make([]byte, 4)
	for i := range 8 {
		require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
		msg := fmt.Sprintf("m%03d", i)
		_, err := io.WriteString(c, msg)
		require.NoError(t, err)
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		require.Equal(t, msg, string(buf))
		time.Sleep(idle / 5)
	}
	// Silence closes it.
	start := time.Now()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Read(buf)
	require.ErrorIs(t, err, io.EOF)
	require.GreaterOrEqual(t, time.Since(start), idle/2)
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestCloseEndsTunnels(t *testing.T) {
	t.Parallel()
	echo := echoServer(t)
	_, port, _ := net.SplitHostPort(echo)
	portN, err := parsePort(port)
	require.NoError(t, err)
	p, pu := startProxy(t, Config{ConnectPorts: []int{portN}}, nil)
	c := openTunnel(t, pu.Host, echo)
	require.NoError(t, p.Close())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)

	// A closed proxy opens no new tunnel.
	_, code := rawRequest(t, pu.Host, fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", echo, echo))
	require.Equal(t, http.StatusServiceUnavailable, code)
}

func TestCertCache(t *testing.T) {
	t.Parallel()
	tca := newTestCA(t, "cache CA")
	authority, err := loadCA(tca.certFile, tca.keyFile)
	require.NoError(t, err)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	var issued int
	cc := newCertCache(authority, time.Hour, 2, clock, func() { issued++ })

	a1, err := cc.get("a.test")
	require.NoError(t, err)
	a2, err := cc.get("a.test")
	require.NoError(t, err)
	require.Same(t, a1, a2)
	require.Equal(t, 1, issued)
	_, err = x509Verify(a1, tca.pool, "a.test")
	require.NoError(t, err)
	require.False(t, a1.Leaf.NotAfter.After(tca.cert.NotAfter), "a leaf never outlives its CA")

	_, err = cc.get("b.test")
	require.NoError(t, err)
	_, err = cc.get("c.test") // evicts a.test, the least recently used
	require.NoError(t, err)
	require.Equal(t, 2, cc.len())
	a3, err := cc.get("a.test")
	require.NoError(t, err)
	require.NotSame(t, a1, a3)
	require.Equal(t, 4, issued)

	mu.Lock()
	now = now.Add(50 * time.Minute) // within the renewal margin
	mu.Unlock()
	a4, err := cc.get("a.test")
	require.NoError(t, err)
	require.NotSame(t, a3, a4)
	require.Equal(t, 5, issued)

	// Concurrent handshakes for a new host share one signing.
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 16)
	for i := range certs {
		wg.Go(func() {
			c, err := cc.get("d.test")
			assert.NoError(t, err)
			certs[i] = c
		})
	}
	wg.Wait()
	for _, c := range certs {
		require.Same(t, certs[0], c)
	}
	require.Equal(t, 6, issued)

	_, err = cc.get("")
	require.Error(t, err)
}

func x509Verify(c *tls.Certificate, roots *x509.CertPool, name string) ([][]*x509.Certificate, error) {
	return c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name})
}
