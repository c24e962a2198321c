package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// blobRule sends every /blob/ URL through P2P.
var blobRule = Rule{Regex: `^https?://[^/]+/blob/`, UseP2P: true}

func TestP2PRuleHitIsServedFromFetcher(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	u := o.URL + "/blob/a?token=s3cret"
	content := bytes.Repeat([]byte("p2p-content;"), 10000)
	f := newMemFetcher(map[string][]byte{u: content})
	reg := prometheus.NewRegistry()
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f, WithMetrics(reg))
	c := proxyClient(t, pu, nil)

	resp, body := get(t, c, u, http.Header{
		"Authorization":       {"Bearer client-token"},
		"Proxy-Authorization": {"Basic cHJveHk6cHc="},
		"Accept-Encoding":     {"gzip"},
		"Connection":          {"X-Hop"},
		"X-Hop":               {"1"},
	})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, content, body)
	require.Equal(t, int64(len(content)), resp.ContentLength)
	require.Equal(t, "p2p", resp.Header.Get(RouteHeader))
	require.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
	require.Equal(t, 0, o.Hits("/blob/a"), "the origin must not be asked for a P2P URL")

	calls := f.Calls()
	require.Len(t, calls, 1)
	require.Equal(t, u, calls[0].url)
	require.Equal(t, "Bearer client-token", calls[0].header.Get("Authorization"), "the client's credentials go to the source fetch")
	for _, k := range []string{"Proxy-Authorization", "Accept-Encoding", "Connection", "X-Hop"} {
		require.Empty(t, calls[0].header.Values(k), k)
	}
	// The handler counts after the last byte is out: the client may have it
	// all a moment before the counters move.
	require.Eventually(t, func() bool {
		return counterValue(t, reg, "damselfly_proxy_requests_total", "route", "p2p") == 1.0 &&
			counterValue(t, reg, "damselfly_proxy_bytes_total", "route", "p2p") == float64(len(content))
	}, 5*time.Second, 5*time.Millisecond, "one p2p request of %d bytes counted", len(content))
}

func TestRoutingDirect(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	f := newMemFetcher(map[string][]byte{})
	rules := []Rule{
		{Regex: `/blob/exempt`, UseP2P: false},
		blobRule,
	}
	_, pu := startProxy(t, Config{Rules: rules}, f)
	c := proxyClient(t, pu, nil)

	tests := []struct {
		name   string
		method string
		path   string
		header http.Header
		status int
	}{
		{name: "no rule matches", method: http.MethodGet, path: "/other", status: http.StatusOK},
		{name: "an earlier rule exempts", method: http.MethodGet, path: "/blob/exempt", status: http.StatusOK},
		{name: "HEAD is direct", method: http.MethodHead, path: "/blob/head", status: http.StatusOK},
		{name: "If-Range GET is direct", method: http.MethodGet, path: "/blob/ranged", header: http.Header{"Range": {"bytes=10-19"}, "If-Range": {time.Unix(1_000_000_000, 0).UTC().Format(http.TimeFormat)}}, status: http.StatusPartialContent},
		{name: "malformed Range is direct", method: http.MethodGet, path: "/blob/badrange", header: http.Header{"Range": {"bytes=10-19,x"}}, status: http.StatusRequestedRangeNotSatisfiable},
		{name: "two Range fields are direct", method: http.MethodGet, path: "/blob/tworanges", header: http.Header{"Range": {"bytes=10-19", "bytes=0-1"}}, status: http.StatusPartialContent},
		{name: "conditional GET is direct", method: http.MethodGet, path: "/blob/cond", header: http.Header{"If-Modified-Since": {time.Now().UTC().Format(http.TimeFormat)}}, status: http.StatusNotModified},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, o.URL+tt.path, nil)
			require.NoError(t, err)
			for k, v := range tt.header {
				req.Header[k] = v
			}
			resp, err := c.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			require.Equal(t, tt.status, resp.StatusCode)
			require.Equal(t, 1, o.Hits(tt.path))
			require.Empty(t, resp.Header.Get(RouteHeader))
			require.Contains(t, resp.Header.Values("Via"), "1.1 damselfly")
			switch tt.status {
			case http.StatusOK:
				if tt.method == http.MethodGet {
					require.Equal(t, blobBody(tt.path), body)
				}
			case http.StatusPartialContent:
				require.Equal(t, blobBody(tt.path)[10:20], body)
			}
		})
	}
	require.Empty(t, f.Calls(), "no request above may use P2P")
}

func TestDirectForwardingHeadersAndBodies(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, newMemFetcher(nil))
	c := proxyClient(t, pu, nil)

	t.Run("request body streamed, query kept", func(t *testing.T) {
		payload := bytes.Repeat([]byte("upload;"), 50000)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, o.URL+"/echo?a=1&b=2", bytes.NewReader(payload))
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "PUT", resp.Header.Get("X-Method"))
		require.Equal(t, "a=1&b=2", resp.Header.Get("X-Query"))
		require.Equal(t, payload, body)
	})
	t.Run("hop-by-hop request fields removed", func(t *testing.T) {
		resp, _ := get(t, c, o.URL+"/seen", http.Header{
			"Connection":          {"X-Private"},
			"X-Private":           {"1"},
			"Keep-Alive":          {"timeout=5"},
			"Proxy-Authorization": {"Basic cHJveHk6cHc="},
			"Authorization":       {"Bearer end-to-end"},
			"X-Forwarded-For":     {"10.9.9.9"},
		})
		require.Equal(t, http.StatusOK, resp.StatusCode)
		seen := o.Seen("/seen")
		for _, k := range []string{"X-Private", "Keep-Alive", "Proxy-Authorization", "X-Forwarded-For"} {
			require.Empty(t, seen.Values(k), k)
		}
		require.Equal(t, "Bearer end-to-end", seen.Get("Authorization"))
		require.Contains(t, seen.Values("Via"), "1.1 damselfly")
	})
	t.Run("hop-by-hop response fields removed", func(t *testing.T) {
		resp, body := get(t, c, o.URL+"/hop", nil)
		require.Equal(t, "hop", string(body))
		require.Empty(t, resp.Header.Get("X-Secret"))
		require.Empty(t, resp.Header.Get("Keep-Alive"))
		require.Equal(t, "end", resp.Header.Get("X-End"))
	})
	t.Run("redirects reach the client", func(t *testing.T) {
		c := *c
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, _ := get(t, &c, o.URL+"/redirect", nil)
		require.Equal(t, http.StatusFound, resp.StatusCode)
		require.Equal(t, "/blob/redirected", resp.Header.Get("Location"))
	})
}

func TestXForwardedFor(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	_, pu := startProxy(t, Config{XForwardedFor: true}, nil)
	get(t, proxyClient(t, pu, nil), o.URL+"/xff", nil)
	require.Equal(t, "127.0.0.1", o.Seen("/xff").Get("X-Forwarded-For"))
}

func TestP2PFailureBeforeFirstByte(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		fetcher   func(u string) *memFetcher
		fallback  bool
		wantRoute string
	}{
		{
			name: "fetch error falls back to the origin",
			fetcher: func(string) *memFetcher {
				f := newMemFetcher(nil)
				f.failBefore = errors.New("supernode unreachable")
				return f
			},
			fallback: true,
		},
		{
			name: "first read error falls back to the origin",
			fetcher: func(u string) *memFetcher {
				f := newMemFetcher(map[string][]byte{u: []byte("x")})
				f.failFirst = errors.New("task failed")
				return f
			},
			fallback: true,
		},
		{
			name: "fetch error with fallback disabled is a 502",
			fetcher: func(string) *memFetcher {
				f := newMemFetcher(nil)
				f.failBefore = errors.New("supernode unreachable")
				return f
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t)
			u := o.URL + "/blob/fb"
			f := tt.fetcher(u)
			_, pu := startProxy(t, Config{Rules: []Rule{blobRule}, DisableFallback: !tt.fallback}, f)
			resp, body := get(t, proxyClient(t, pu, nil), u, nil)
			require.Len(t, f.Calls(), 1)
			if tt.fallback {
				require.Equal(t, http.StatusOK, resp.StatusCode)
				require.Equal(t, blobBody("/blob/fb"), body)
				require.Equal(t, "fallback", resp.Header.Get(RouteHeader))
				require.Equal(t, 1, o.Hits("/blob/fb"))
				return
			}
			require.Equal(t, http.StatusBadGateway, resp.StatusCode)
			require.Equal(t, "peer-to-peer download failed\n", string(body))
			require.Equal(t, 0, o.Hits("/blob/fb"))
		})
	}
}

func TestP2PFailureMidStreamTruncates(t *testing.T) {
	t.Parallel()
	for _, unknown := range []bool{false, true} {
		name := "known size"
		if unknown {
			name = "unknown size"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t)
			u := o.URL + "/blob/mid"
			f := newMemFetcher(map[string][]byte{u: bytes.Repeat([]byte("z"), 100000)})
			f.failAfter = 5000
			f.unknownSize = unknown
			_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
			c := proxyClient(t, pu, nil)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
			require.NoError(t, err)
			resp, err := c.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			body, err := io.ReadAll(resp.Body)
			require.Error(t, err, "a failed P2P body must not look complete")
			if unknown {
				// Of content of unknown size, the last 64 KiB received
				// wait for the end: here all of it.
				require.Empty(t, body)
			} else {
				require.Len(t, body, 5000)
			}
			require.Equal(t, 0, o.Hits("/blob/mid"))
		})
	}
}

func TestP2PStreamsBeforeFetchEnds(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	u := o.URL + "/blob/stream"
	content := bytes.Repeat([]byte("s"), 200000) // more than the held-back tail
	f := newMemFetcher(map[string][]byte{u: content})
	f.gate = make(chan struct{})
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
	c := proxyClient(t, pu, nil)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	first := make([]byte, 1000)
	_, err = io.ReadFull(resp.Body, first) // only the first chunk exists yet
	require.NoError(t, err)
	require.Equal(t, content[:1000], first)
	close(f.gate)
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, content[1000:], rest)
}

func TestRedirectRules(t *testing.T) {
	t.Parallel()
	real := newOrigin(t)
	mirror := newOrigin(t)
	mirrorHost := "mirror.test:" + mirror.Port()
	f := newMemFetcher(map[string][]byte{"http://" + mirrorHost + "/blob/x": []byte("from p2p via mirror")})
	rules := []Rule{
		{Regex: `^http://[^/]+/blob/`, UseP2P: true, Redirect: mirrorHost},
		{Regex: `^http://[^/]+/files/(.*)$`, Redirect: "http://" + mirrorHost + "/moved/$1"},
	}
	_, pu := startProxy(t, Config{Rules: rules}, f)
	c := proxyClient(t, pu, nil)

	_, body := get(t, c, real.URL+"/blob/x", nil)
	require.Equal(t, "from p2p via mirror", string(body))
	require.Equal(t, "http://"+mirrorHost+"/blob/x", f.Calls()[0].url)

	resp, body := get(t, c, real.URL+"/files/a/b", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, blobBody("/moved/a/b"), body)
	require.Equal(t, 1, mirror.Hits("/moved/a/b"))
	require.Equal(t, 0, real.Hits("/files/a/b"))
	require.Equal(t, 0, real.Hits("/blob/x"))
}

func TestOutboundPolicy(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	tlsOrigin := httptestTLS(t)
	_, pu := serveProxy(t, Config{ConnectPorts: []int{tlsOrigin.PortNumber(t)}}, nil)
	c := proxyClient(t, pu, nil)

	resp, body := get(t, c, o.URL+"/denied", nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, string(body), "outbound policy")
	require.Equal(t, 0, o.Hits("/denied"))

	_, code := rawRequest(t, pu.Host, "CONNECT "+tlsOrigin.Listener.Addr().String()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Equal(t, http.StatusForbidden, code)

	// With a deny list a network that is otherwise allowed is refused too.
	_, pu2 := serveProxy(t, Config{Outbound: OutboundConfig{Allow: []string{"127.0.0.2"}, Deny: []string{"127.0.0.0/8"}}}, nil)
	resp, _ = get(t, proxyClient(t, pu2, nil), o.URL+"/denied2", nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
}

func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	tlsOrigin := httptestTLS(t)
	_, pu := startProxy(t, Config{ConnectPorts: []int{443, tlsOrigin.PortNumber(t)}, MaxHeaderBytes: 4096}, nil)
	tests := []struct {
		name string
		raw  string
		code int
	}{
		{"origin-form target", "GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
		{"unsupported scheme", "GET ftp://files.test/a HTTP/1.1\r\nHost: files.test\r\n\r\n", http.StatusBadRequest},
		{"user information", "GET http://u:p@files.test/a HTTP/1.1\r\nHost: files.test\r\n\r\n", http.StatusBadRequest},
		{"CONNECT without port", "CONNECT files.test HTTP/1.1\r\nHost: files.test\r\n\r\n", http.StatusBadRequest},
		{"CONNECT with a bad port", "CONNECT files.test:https HTTP/1.1\r\nHost: files.test:https\r\n\r\n", http.StatusBadRequest},
		{"CONNECT to port 0", "CONNECT files.test:0 HTTP/1.1\r\nHost: files.test:0\r\n\r\n", http.StatusBadRequest},
		{"CONNECT to a port not allowed", "CONNECT files.test:22 HTTP/1.1\r\nHost: files.test:22\r\n\r\n", http.StatusForbidden},
		{"garbage request line", "HELLO\r\n\r\n", http.StatusBadRequest},
		{"oversized header", "GET http://files.test/a HTTP/1.1\r\nHost: files.test\r\nX-Big: " + strings.Repeat("b", 5000) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"oversized CONNECT", "CONNECT files.test:443 HTTP/1.1\r\nHost: files.test:443\r\nX-Big: " + strings.Repeat("b", 5000) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"CONNECT to an unknown host", "CONNECT nowhere.invalid:443 HTTP/1.1\r\nHost: nowhere.invalid:443\r\n\r\n", http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			line, code := rawRequest(t, pu.Host, tt.raw)
			require.Equal(t, tt.code, code, line)
		})
	}
}

func TestLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	o := newOrigin(t)
	f := newMemFetcher(nil)
	f.failBefore = &url.Error{Op: "Get", URL: o.URL + "/blob/s?X-Amz-Signature=leaked-sig", Err: errors.New("boom")}
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f, WithLogger(zap.New(core)))
	c := proxyClient(t, pu, nil)
	get(t, c, o.URL+"/blob/s?X-Amz-Signature=leaked-sig", http.Header{"Authorization": {"Bearer leaked-token"}, "Cookie": {"leaked-cookie"}})
	get(t, c, "http://nowhere.invalid/x?leaked-query=1", http.Header{"Authorization": {"Bearer leaked-token"}})

	require.NotZero(t, logs.Len())
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + toString(v)
		}
		require.NotContains(t, line, "leaked", "log line: %s", line)
	}
	require.NotEmpty(t, logs.FilterMessage("p2p download failed, forwarding directly").All())
}

func toString(v any) string { return fmt.Sprint(v) }

func TestIsProxyRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
		want bool
	}{
		{"absolute form", "GET http://host.test/v2/ HTTP/1.1\r\nHost: host.test\r\n\r\n", true},
		{"CONNECT", "CONNECT host.test:443 HTTP/1.1\r\nHost: host.test:443\r\n\r\n", true},
		{"origin form", "GET /v2/ HTTP/1.1\r\nHost: host.test\r\n\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tt.raw)))
			require.NoError(t, err)
			require.Equal(t, tt.want, IsProxyRequest(req))
		})
	}
}

func TestNewNeedsFetcherForP2PRules(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Rules: []Rule{blobRule}}, nil)
	require.ErrorIs(t, err, ErrInvalid)
}

// counterValue returns the value of the counter name{label=value} in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// countingTransport counts the requests it carries.
type countingTransport struct {
	rt http.RoundTripper
	n  atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

func TestWithTransport(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	ct := &countingTransport{rt: base}
	// The injected transport is the caller's: the outbound policy (which
	// denies 127.0.0.1 here) does not apply to it.
	_, pu := serveProxy(t, Config{}, nil, WithTransport(ct))
	resp, body := get(t, proxyClient(t, pu, nil), o.URL+"/via-transport", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, blobBody("/via-transport"), body)
	require.Equal(t, int64(1), ct.n.Load())
}

func TestFetcherWithoutBodyIsAFailure(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}, DisableFallback: true}, nilBodyFetcher{})
	resp, _ := get(t, proxyClient(t, pu, nil), o.URL+"/blob/nil", nil)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
}

type nilBodyFetcher struct{}

func (nilBodyFetcher) Fetch(context.Context, string, http.Header) (io.ReadCloser, int64, error) {
	return nil, 0, nil
}

func (nilBodyFetcher) FetchRange(context.Context, string, http.Header, string) (*httpx.Body, int64, error) {
	return nil, 0, nil
}

// sizedFetcher serves body but claims size.
type sizedFetcher struct {
	body string
	size int64
}

func (f sizedFetcher) Fetch(context.Context, string, http.Header) (io.ReadCloser, int64, error) {
	return io.NopCloser(strings.NewReader(f.body)), f.size, nil
}

func (f sizedFetcher) FetchRange(context.Context, string, http.Header, string) (*httpx.Body, int64, error) {
	return nil, 0, errors.New("no ranges here")
}

func TestP2PEmptyBodies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		f         sizedFetcher
		wantRoute string
		wantBody  []byte
	}{
		{name: "empty content is served from P2P", f: sizedFetcher{size: 0}, wantRoute: "p2p", wantBody: []byte{}},
		{name: "no byte of a non-empty content falls back", f: sizedFetcher{size: 10}, wantRoute: "fallback", wantBody: blobBody("/blob/empty")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t)
			_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, tt.f)
			resp, body := get(t, proxyClient(t, pu, nil), o.URL+"/blob/empty", nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, tt.wantRoute, resp.Header.Get(RouteHeader))
			require.Equal(t, tt.wantBody, body)
		})
	}
}

func TestRedirectToBadURLIsA502(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	rules := []Rule{{Regex: `^http://[^/]+/nohost/(.*)$`, Redirect: "http:///$1"}}
	_, pu := startProxy(t, Config{Rules: rules}, nil)
	resp, _ := get(t, proxyClient(t, pu, nil), o.URL+"/nohost/x", nil)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.Equal(t, 0, o.Hits("/nohost/x"))
}

// A plain Range on a P2P rule: the fetcher gets the whole content's
// request (no Range) and the range, opens every part before the first
// byte, and the answer is the exact 206; a failure before the first byte
// falls back to the origin, after it aborts.
func TestP2PRange(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	u := o.URL + "/blob/ranged"
	content := make([]byte, 300_000)
	for i := range content {
		content[i] = byte(i % 251)
	}

	t.Run("multipart", func(t *testing.T) {
		t.Parallel()
		f := newMemFetcher(map[string][]byte{u: content})
		_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
		resp, body := get(t, proxyClient(t, pu, nil), u, http.Header{"Range": {"bytes=200000-249999,0-49999,100000-"}, "Accept-Encoding": {"identity"}})
		require.Equal(t, http.StatusPartialContent, resp.StatusCode)
		require.Equal(t, "p2p", resp.Header.Get(RouteHeader))
		require.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
		require.Equal(t, int64(len(body)), resp.ContentLength)
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		require.NoError(t, err)
		require.Equal(t, "multipart/byteranges", mt)
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		var got []string
		for {
			p, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			r, total, err := httpx.ParseContentRange(p.Header.Get("Content-Range"))
			require.NoError(t, err)
			require.Equal(t, int64(len(content)), total)
			b, err := io.ReadAll(p)
			require.NoError(t, err)
			require.Equal(t, content[r.Start:r.Start+r.Length], b)
			got = append(got, p.Header.Get("Content-Range"))
		}
		// 200000-249999 and 100000- overlap: coalesced in the first one's place.
		require.Equal(t, []string{"bytes 100000-299999/300000", "bytes 0-49999/300000"}, got)
		calls := f.Calls()
		require.Len(t, calls, 1)
		require.Equal(t, [][2]int64{{100_000, 200_000}, {0, 50_000}}, calls[0].opens)
		require.Empty(t, calls[0].header.Values("Range"))
	})

	t.Run("whole content as a range", func(t *testing.T) {
		t.Parallel()
		f := newMemFetcher(map[string][]byte{u: content})
		_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
		resp, body := get(t, proxyClient(t, pu, nil), u, http.Header{"Range": {"bytes=0-"}})
		require.Equal(t, http.StatusPartialContent, resp.StatusCode)
		require.Equal(t, "bytes 0-299999/300000", resp.Header.Get("Content-Range"))
		require.Equal(t, content, body)
		require.Equal(t, [][2]int64{{0, -1}}, f.Calls()[0].opens, "read to its verified end")
	})

	t.Run("failure before the first byte falls back", func(t *testing.T) {
		t.Parallel()
		f := newMemFetcher(map[string][]byte{u: content})
		f.failFirst = errMidStream
		_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
		resp, body := get(t, proxyClient(t, pu, nil), u, http.Header{"Range": {"bytes=10-19"}})
		require.Equal(t, http.StatusPartialContent, resp.StatusCode)
		require.Equal(t, "fallback", resp.Header.Get(RouteHeader))
		require.Equal(t, blobBody("/blob/ranged")[10:20], body, "the origin's answer")
	})

	t.Run("no fallback", func(t *testing.T) {
		t.Parallel()
		f := newMemFetcher(map[string][]byte{u: content})
		f.failBefore = errNoContent
		_, pu := startProxy(t, Config{Rules: []Rule{blobRule}, DisableFallback: true}, f)
		resp, _ := get(t, proxyClient(t, pu, nil), u, http.Header{"Range": {"bytes=10-19"}})
		require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	})

	t.Run("failure mid-stream truncates", func(t *testing.T) {
		t.Parallel()
		f := newMemFetcher(map[string][]byte{u: content})
		f.failAfter = 5000
		_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		require.NoError(t, err)
		req.Header.Set("Range", "bytes=1000-99999")
		resp, err := proxyClient(t, pu, nil).Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusPartialContent, resp.StatusCode)
		got, err := io.ReadAll(resp.Body)
		require.Error(t, err, "never a clean short body")
		require.Less(t, len(got), 99_000)
	})
}

// TestP2PHoldsBackTheEnd: the last 64 KiB of a whole-content P2P answer go
// out only once the body has ended cleanly (after the whole digest is
// verified): a failure at the very end never follows a body that already
// looks complete.
func TestP2PHoldsBackTheEnd(t *testing.T) {
	t.Parallel()
	for _, unknown := range []bool{false, true} {
		o := newOrigin(t)
		u := o.URL + "/blob/end"
		content := bytes.Repeat([]byte("e"), 100000)
		f := newMemFetcher(map[string][]byte{u: content})
		f.failAfter = len(content) // every byte out, then the digest check fails
		f.unknownSize = unknown
		_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
		c := proxyClient(t, pu, nil)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Error(t, err, "unknown size %v", unknown)
		require.LessOrEqual(t, len(body), len(content)-httpx.HoldBack, "unknown size %v", unknown)
	}
}
