package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzProxyRequest: any request the HTTP server parses as a proxy request
// (absolute-form, or CONNECT), with any headers, sent to the forward proxy
// over TCP, is answered in time and without a panic: never 500, and a 5xx
// only for a well-formed target the proxy really tried to reach (502 for a
// refused connection or a name that does not resolve, 504 on a timeout).
// Malformed targets are 4xx. Every address but 127.0.0.1 is denied by the
// outbound policy, so no input reaches beyond this machine.
//
// In the inputs, "{origin}" stands for origin.test:<port> of a live origin
// (resolved to 127.0.0.1), so that the fuzzer reaches the P2P and the
// direct routes and the tunnel.
func FuzzProxyRequest(f *testing.F) {
	o := &origin{hits: map[string]int{}, seen: map[string]http.Header{}}
	o.Server = httptest.NewServer(originHandler(o))
	f.Cleanup(o.Close)
	_, port, _ := net.SplitHostPort(o.Listener.Addr().String())
	originHost := "origin.test:" + port
	fetcher := newMemFetcher(map[string][]byte{"http://" + originHost + "/blob/a": blobBody("/blob/a")})
	cfg := Config{Rules: []Rule{blobRule}}
	cfg.Outbound.Allow = []string{"127.0.0.1/32"}
	cfg.Outbound.Deny = []string{"0.0.0.0/0", "::/0"}
	p, err := New(cfg, fetcher, WithResolver(testResolver))
	if err != nil {
		f.Fatal(err)
	}
	srv := httptest.NewServer(p)
	f.Cleanup(func() {
		srv.Close()
		_ = p.Close()
	})
	addr := srv.Listener.Addr().String()

	for _, seed := range []struct{ method, target, header string }{
		{"GET", "http://{origin}/blob/a", ""},
		{"GET", "http://{origin}/blob/a", "Range: bytes=0-10"},
		{"GET", "http://{origin}/blob/b?x=1#frag", "Authorization: Bearer t"},
		{"HEAD", "http://{origin}/echo", "Connection: X-Secret\r\nX-Secret: 1"},
		{"DELETE", "HTTP://ORIGIN.TEST:" + port + "/hop", ""},
		{"GET", "https://{origin}/blob/a", ""},
		{"GET", "ftp://{origin}/x", ""},
		{"GET", "http://user:pw@{origin}/x", ""},
		{"GET", "http://:80/x", ""},
		{"GET", "http://{origin}:99/x", ""},
		{"GET", "http://10.0.0.1/x", ""},
		{"GET", "http://[::1]:1/x", ""},
		{"GET", "http://nowhere.invalid/x", ""},
		{"CONNECT", "{origin}", ""},
		{"CONNECT", "origin.test:1", ""},
		{"CONNECT", "origin.test", ""},
		{"CONNECT", "origin.test:0", ""},
		{"CONNECT", "origin.test:99999", ""},
		{"CONNECT", ":443", ""},
		{"CONNECT", "[::1]:443", "Proxy-Authorization: Basic x"},
		{"CONNECT", "http://{origin}/", ""},
		{"OPTIONS", "*", ""},
	} {
		f.Add(seed.method, seed.target, seed.header)
	}
	f.Fuzz(func(t *testing.T, method, target, header string) {
		target = strings.ReplaceAll(target, "{origin}", originHost)
		header = strings.ReplaceAll(header, "{origin}", originHost)
		raw := method + " " + target + " HTTP/1.1\r\nHost: proxy.test\r\n"
		if header != "" {
			raw += header + "\r\n"
		}
		raw += "\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || !IsProxyRequest(req) || req.ContentLength != 0 || len(req.TransferEncoding) > 0 ||
			req.Header.Get("Expect") != "" {
			return // answered by the HTTP server or the mirror, or waiting for a body
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatalf("%q: no answer: %v", raw, err)
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusInternalServerError:
			t.Fatalf("%q: 500", raw)
		case resp.StatusCode >= 500 && !wellFormedTarget(req):
			t.Fatalf("%q: malformed target answered %d", raw, resp.StatusCode)
		}
	})
}

// wellFormedTarget reports whether a proxy request names a destination the
// proxy may try to reach: host:port for CONNECT, an absolute http(s) URL
// with a host and no user information otherwise.
func wellFormedTarget(r *http.Request) bool {
	if r.Method == http.MethodConnect {
		host, port, err := net.SplitHostPort(r.RequestURI)
		n, perr := strconv.Atoi(port)
		return err == nil && host != "" && perr == nil && n > 0 && n <= 65535
	}
	u := r.URL
	return (u.Scheme == "http" || u.Scheme == "https") && u.Hostname() != "" && u.User == nil
}
