package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/httpx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fetchCall is one call of memFetcher.Fetch or FetchRange.
type fetchCall struct {
	url    string
	header http.Header
	rng    string // FetchRange's range header
	opens  [][2]int64
}

// memFetcher is the P2P network of the tests: content by URL in memory,
// streamed in small chunks, with every call recorded.
type memFetcher struct {
	mu      sync.Mutex
	content map[string][]byte
	calls   []fetchCall

	failBefore  error         // Fetch fails with it
	failFirst   error         // the first Read fails with it
	failAfter   int           // > 0: Read fails once this many bytes are out
	unknownSize bool          // report size -1
	gate        chan struct{} // non-nil: after the first chunk, Read waits for it to close
}

var errNoContent = errors.New("no such content in the test network")

func newMemFetcher(content map[string][]byte) *memFetcher {
	return &memFetcher{content: content}
}

func (f *memFetcher) Fetch(ctx context.Context, u string, header http.Header) (io.ReadCloser, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fetchCall{url: u, header: header.Clone()})
	if f.failBefore != nil {
		return nil, 0, f.failBefore
	}
	data, ok := f.content[u]
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", u, errNoContent)
	}
	size := int64(len(data))
	if f.unknownSize {
		size = -1
	}
	return &chunkReader{ctx: ctx, data: data, failFirst: f.failFirst, failAfter: f.failAfter, gate: f.gate}, size, nil
}

// FetchRange serves ranges of the content as chunkReaders, with the same
// failures as Fetch, and records the (off, n) of each reader opened.
func (f *memFetcher) FetchRange(ctx context.Context, u string, header http.Header, rangeHeader string) (*httpx.Body, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fetchCall{url: u, header: header.Clone(), rng: rangeHeader})
	call := &f.calls[len(f.calls)-1]
	if f.failBefore != nil {
		return nil, -1, f.failBefore
	}
	data, ok := f.content[u]
	if !ok {
		return nil, -1, fmt.Errorf("%s: %w", u, errNoContent)
	}
	size := int64(len(data))
	b, err := httpx.NewBody(rangeHeader, size, "application/octet-stream")
	if err != nil {
		return nil, size, err
	}
	err = b.Open(func(off, n int64) (io.ReadCloser, error) {
		call.opens = append(call.opens, [2]int64{off, n})
		end := size
		if n >= 0 {
			end = off + n
		}
		return &chunkReader{ctx: ctx, data: data[off:end], failFirst: f.failFirst, failAfter: f.failAfter, gate: f.gate}, nil
	})
	return b, size, err
}

func (f *memFetcher) Calls() []fetchCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fetchCall(nil), f.calls...)
}

// chunkReader hands out data 1000 bytes at a time.
type chunkReader struct {
	ctx       context.Context
	data      []byte
	off       int
	failFirst error
	failAfter int
	gate      chan struct{}
	closed    atomic.Bool
}

var errMidStream = errors.New("piece digest mismatch")

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.failFirst != nil {
		return 0, r.failFirst
	}
	if r.off > 0 && r.gate != nil {
		select {
		case <-r.gate:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	if r.failAfter > 0 && r.off >= r.failAfter {
		return 0, errMidStream
	}
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1000)], r.data[r.off:])
	r.off += n
	return n, nil
}

func (r *chunkReader) Close() error {
	r.closed.Store(true)
	return nil
}

// origin is a test origin server counting requests per path.
type origin struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
	seen map[string]http.Header // last request header per path
}

// blobBody is what the origin serves under /blob... paths.
func blobBody(path string) []byte {
	return bytes.Repeat([]byte("origin:"+path+";"), 3000)
}

func originHandler(o *origin) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.hits[r.URL.Path]++
		o.seen[r.URL.Path] = r.Header.Clone()
		o.mu.Unlock()
		switch {
		case r.URL.Path == "/echo":
			// Read all first: an HTTP/1 server does not read a request body
			// once the response has started.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("X-Method", r.Method)
			w.Header().Set("X-Query", r.URL.RawQuery)
			_, _ = w.Write(body)
		case r.URL.Path == "/hop":
			w.Header().Set("Connection", "X-Secret")
			w.Header().Set("X-Secret", "hop")
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("X-End", "end")
			_, _ = io.WriteString(w, "hop")
		case r.URL.Path == "/redirect":
			http.Redirect(w, r, "/blob/redirected", http.StatusFound)
		default:
			http.ServeContent(w, r, "", time.Unix(1_000_000_000, 0), bytes.NewReader(blobBody(r.URL.Path)))
		}
	})
}

// newOrigin starts a plain HTTP origin on 127.0.0.1.
func newOrigin(t *testing.T) *origin {
	t.Helper()
	o := &origin{hits: map[string]int{}, seen: map[string]http.Header{}}
	o.Server = httptest.NewServer(originHandler(o))
	t.Cleanup(o.Close)
	return o
}

// newTLSOrigin starts an HTTPS origin on 127.0.0.1 with cert.
func newTLSOrigin(t *testing.T, cert tls.Certificate) *origin {
	t.Helper()
	o := &origin{hits: map[string]int{}, seen: map[string]http.Header{}}
	o.Server = httptest.NewUnstartedServer(originHandler(o))
	o.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	o.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	o.StartTLS()
	t.Cleanup(o.Close)
	return o
}

// httptestTLS starts an HTTPS origin with httptest's own certificate
// (valid for 127.0.0.1 and example.com).
func httptestTLS(t *testing.T) *origin {
	t.Helper()
	o := &origin{hits: map[string]int{}, seen: map[string]http.Header{}}
	o.Server = httptest.NewUnstartedServer(originHandler(o))
	o.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	o.StartTLS()
	t.Cleanup(o.Close)
	return o
}

func (o *origin) Hits(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.hits[path]
}

func (o *origin) Seen(path string) http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[path]
}

func (o *origin) Port() string {
	_, port, _ := net.SplitHostPort(o.Listener.Addr().String())
	return port
}

func (o *origin) PortNumber(t *testing.T) int {
	n, err := parsePort(o.Port())
	require.NoError(t, err)
	return n
}

// testResolver resolves every *.test name to 127.0.0.1.
func testResolver(_ context.Context, host string) ([]netip.Addr, error) {
	if strings.HasSuffix(host, ".test") {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return nil, fmt.Errorf("%s: not a test host", host)
}

// startProxy serves a proxy built from cfg on 127.0.0.1, allowing
// connections to 127.0.0.1 and resolving *.test names there.
func startProxy(t *testing.T, cfg Config, f Fetcher, opts ...Option) (*Proxy, *url.URL) {
	t.Helper()
	cfg.Outbound.Allow = append(cfg.Outbound.Allow, "127.0.0.1/32")
	opts = append([]Option{WithResolver(testResolver)}, opts...)
	return serveProxy(t, cfg, f, opts...)
}

// serveProxy serves a proxy built from cfg as it is.
func serveProxy(t *testing.T, cfg Config, f Fetcher, opts ...Option) (*Proxy, *url.URL) {
	t.Helper()
	p, err := New(cfg, f, opts...)
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return p, u
}

// proxyClient is an HTTP client that sends everything through proxyURL and
// trusts roots for TLS.
func proxyClient(t *testing.T, proxyURL *url.URL, roots *x509.CertPool) *http.Client {
	t.Helper()
	tr := &http.Transport{
		Proxy:             http.ProxyURL(proxyURL),
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true, // offer h2: an intercepted connection must still speak HTTP/1.1
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func get(t *testing.T, c *http.Client, u string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

// testCA is a certificate authority made for a test, written to PEM files.
type testCA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	pool     *x509.CertPool
	certFile string
	keyFile  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	return newTestCAValid(t, name, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
}

// newTestCAValid makes a CA valid from notBefore to notAfter.
func newTestCAValid(t *testing.T, name string, notBefore, notAfter time.Time) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	dir := t.TempDir()
	ca := &testCA{cert: cert, key: key, pool: pool,
		certFile: filepath.Join(dir, "ca.crt"), keyFile: filepath.Join(dir, "ca.key")}
	require.NoError(t, os.WriteFile(ca.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(ca.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600))
	return ca
}

// serverCert issues a server certificate for names (DNS names or IPs).
func (ca *testCA) serverCert(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// rawRequest sends raw bytes to addr and returns the status line and code
// of the answer.
func rawRequest(t *testing.T, addr, raw string) (string, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, raw)
	require.NoError(t, err)
	line, err := readLine(c)
	require.NoError(t, err)
	var proto string
	var code int
	_, err = fmt.Sscanf(line, "%s %d", &proto, &code)
	require.NoError(t, err, "status line %q", line)
	return line, code
}

// readLine reads one CRLF-terminated line byte by byte, so that nothing
// after it is consumed.
func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 8192 {
		if _, err := io.ReadFull(r, one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return strings.TrimRight(string(b), "\r"), nil
		}
		b = append(b, one[0])
	}
	return string(b), errors.New("line too long")
}
