package proxy

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRangeMatrixGoesDirect: a request with any Range header, well-formed
// or not, for a URL a P2P rule matches is forwarded to the origin, whose
// answer comes back unchanged; the P2P fetcher is never asked.
func TestRangeMatrixGoesDirect(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	f := newMemFetcher(nil)
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
	c := proxyClient(t, pu, nil)
	direct := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	body := blobBody("/blob/r")
	size := len(body)

	for _, rng := range []string{
		"bytes=0-0", "bytes=-100", "bytes=-99999999", "bytes=100-", "bytes=100-99999999",
		"bytes=99999999-", "bytes=9-1", "bytes=0-1,5-9", "bytes=abc", "bytes=", "bytes=-0",
		"bytes=0-99999999999999999999", "BYTES=0-9", " bytes = 0 - 9 ", "items=0-9", "bytes=-5-9",
	} {
		t.Run(rng, func(t *testing.T) {
			u := o.URL + "/blob/r"
			want, wantBody := get(t, direct, u, http.Header{"Range": {rng}})
			resp, got := get(t, c, u, http.Header{"Range": {rng}})
			require.Equal(t, want.StatusCode, resp.StatusCode, rng)
			require.Less(t, resp.StatusCode, 500)
			require.Equal(t, want.Header.Get("Content-Range"), resp.Header.Get("Content-Range"), rng)
			if strings.HasPrefix(want.Header.Get("Content-Type"), "multipart/byteranges") {
				// The origin picks a random boundary per answer.
				require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges"))
				require.Equal(t, len(wantBody), len(got), rng)
			} else {
				require.True(t, bytes.Equal(wantBody, got), "%s: body differs", rng)
			}
			require.NotEqual(t, "p2p", resp.Header.Get(RouteHeader))
			if resp.StatusCode == http.StatusPartialContent && resp.Header.Get("Content-Range") != "" {
				require.Less(t, len(got), size+1)
				require.True(t, bytes.Contains(body, got), "a slice of the content")
			}
		})
	}
	require.Empty(t, f.Calls(), "a ranged request never goes to the P2P fetcher")
}

// TestMalformedHeadersAndBodies: framing the proxy's listener must refuse
// before anything is forwarded.
func TestMalformedHeadersAndBodies(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	_, pu := startProxy(t, Config{MaxHeaderBytes: 4096}, nil)
	target := o.URL + "/echo"
	tests := []struct {
		name string
		raw  string
		code int
	}{
		{"negative content length", "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		{"overflowing content length", "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
		{"two content lengths", "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
		{"unknown transfer encoding", "POST " + target + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"nul in a header value", "GET " + target + " HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400},
		{"space in a header name", "GET " + target + " HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", 400},
		{"no host header", "GET " + target + " HTTP/1.1\r\n\r\n", 400},
		{"two host headers", "GET " + target + " HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400},
		{"many small headers", "GET " + target + " HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: 0123456789\r\n", 400) + "\r\n", 431},
		{"bad http version", "GET " + target + " HTTP/9.9\r\nHost: x\r\n\r\n", 505},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			line, code := rawRequest(t, pu.Host, tt.raw)
			require.Equal(t, tt.code, code, line)
		})
	}
	require.Zero(t, o.Hits("/echo"), "nothing malformed reached the origin")
}
