package proxy

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRangeMatrix: a request with a Range header for a URL a P2P rule
// matches. A Range that parses is answered from the P2P fetcher, exactly
// (206 with Content-Range, multipart for several ranges, 416 with
// "bytes */size"); one that does not is forwarded to the origin, whose
// answer comes back unchanged.
func TestRangeMatrix(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	u := o.URL + "/blob/r"
	body := blobBody("/blob/r")
	size := int64(len(body))
	f := newMemFetcher(map[string][]byte{u: body})
	_, pu := startProxy(t, Config{Rules: []Rule{blobRule}}, f)
	c := proxyClient(t, pu, nil)
	direct := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	p2p := []struct {
		rng        string
		status     int
		start, end int64 // inclusive, for a single-range 206
		multipart  bool
	}{
		{"bytes=0-0", 206, 0, 0, false},
		{"bytes=-100", 206, size - 100, size - 1, false},
		{"bytes=-99999999", 206, 0, size - 1, false},
		{"bytes=100-", 206, 100, size - 1, false},
		{"bytes=100-99999999", 206, 100, size - 1, false},
		{"bytes=0-1,2-9", 206, 0, 9, false},
		{"BYTES=0-9", 206, 0, 9, false},
		{" bytes = 0 - 9 ", 206, 0, 9, false},
		{"bytes=0-1,5-9", 206, 0, 0, true},
		{"bytes=99999999-", 416, 0, 0, false},
		{"bytes=-0", 416, 0, 0, false},
	}
	for _, tt := range p2p {
		t.Run(tt.rng, func(t *testing.T) {
			resp, got := get(t, c, u, http.Header{"Range": {tt.rng}})
			require.Equal(t, tt.status, resp.StatusCode, tt.rng)
			require.Equal(t, "p2p", resp.Header.Get(RouteHeader))
			switch {
			case tt.status == 416:
				require.Equal(t, "bytes */"+strconv.FormatInt(size, 10), resp.Header.Get("Content-Range"))
			case tt.multipart:
				require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges; boundary="))
				require.Equal(t, int64(len(got)), resp.ContentLength)
			default:
				require.Equal(t, fmt.Sprintf("bytes %d-%d/%d", tt.start, tt.end, size), resp.Header.Get("Content-Range"))
				require.Equal(t, tt.end-tt.start+1, resp.ContentLength)
				require.Equal(t, body[tt.start:tt.end+1], got)
			}
		})
	}
	require.Zero(t, o.Hits("/blob/r"), "the origin was never asked")

	for _, rng := range []string{
		"bytes=9-1", "bytes=abc", "bytes=", "bytes=0-99999999999999999999", "items=0-9", "bytes=-5-9", "bytes=0-1,x",
	} {
		t.Run(rng, func(t *testing.T) {
			want, wantBody := get(t, direct, u, http.Header{"Range": {rng}})
			resp, got := get(t, c, u, http.Header{"Range": {rng}})
			require.Equal(t, want.StatusCode, resp.StatusCode, rng)
			require.Less(t, resp.StatusCode, 500)
			require.Equal(t, want.Header.Get("Content-Range"), resp.Header.Get("Content-Range"), rng)
			require.True(t, bytes.Equal(wantBody, got), "%s: body differs", rng)
			require.Empty(t, resp.Header.Get(RouteHeader))
		})
	}
	for _, call := range f.Calls() {
		require.Empty(t, call.header.Values("Range"), "the source fetch is of the whole content")
	}
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
