package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRawClient: the load generator's own HTTP/1.1 client against net/http's
// server: a good answer, keep-alive across requests, a reconnect after
// "Connection: close", and every wrong answer an error.
func TestRawClient(t *testing.T) {
	body := []byte(`{"schemaVersion":2}`)
	sum := sha256.Sum256(body)
	good := "sha256:" + hex.EncodeToString(sum[:])
	other := "sha256:" + strings.Repeat("0", 64)
	conns := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		switch r.URL.Path {
		case "/good", "/close":
			h.Set("Docker-Content-Digest", good)
			if r.URL.Path == "/close" {
				h.Set("Connection", "close")
			}
		case "/liar":
			h.Set("Docker-Content-Digest", other)
		case "/wrongbody":
			h.Set("Docker-Content-Digest", good)
			_, _ = w.Write([]byte(`{"schemaVersion":3}`))
			return
		case "/chunked":
			h.Set("Docker-Content-Digest", good)
			_, _ = w.Write(body)
			w.(http.Flusher).Flush()
			return
		default:
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns++
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	c := &rawClient{addr: addr, deadline: time.Now().Add(10 * time.Second)}
	t.Cleanup(c.close)
	get := func(path string, hash bool) error { return c.get(manifestRequest(addr, path), good, hash) }

	for range 3 {
		require.NoError(t, get("/good", true))
	}
	require.NoError(t, get("/close", false))
	require.Nil(t, c.conn, "closed after Connection: close")
	require.NoError(t, get("/good", false))
	for _, p := range []string{"/liar", "/missing", "/chunked"} {
		require.True(t, errors.Is(get(p, false), errAnswer), p)
		require.Nil(t, c.conn, "closed after an error")
	}
	require.ErrorIs(t, get("/wrongbody", true), errAnswer)
	require.NoError(t, get("/wrongbody", false), "only a sample of bodies is hashed")
	require.NoError(t, get("/good", true))
	srv.Close()
	require.Equal(t, 6, conns, "one connection, then one per close or error")
}
