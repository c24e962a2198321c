package cmd

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// deadAddr is an address nothing listens on: connection refused.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// silentAddr accepts connections and never answers: a supernode that hangs.
func silentAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// TestReadyzWrongNode: a dfdaemon whose --node names no supernode starts,
// says so in a warning naming the address, is live (/healthz 200) and not
// ready (/readyz 503 naming the address and why).
func TestReadyzWrongNode(t *testing.T) {
	t.Parallel()
	dead := deadAddr(t)
	core, logs := observer.New(zap.WarnLevel)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{
			"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--node", dead,
			"--data-dir", filepath.Join(t.TempDir(), "dfdaemon"), "--cluster-token-file", clusterTokenFile(t),
		}, WithLogger(zap.New(core)), WithStderr(io.Discard), withEnv(noEnv), WithReady(func(m, _ net.Addr) { ready <- m }))
	}()
	var addr string
	select {
	case a := <-ready:
		addr = a.String()
	case err := <-done:
		t.Fatalf("dfdaemon did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("dfdaemon did not start")
	}
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	resp, body := get(t, plainClient, "http://"+addr+"/healthz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "live")
	start := time.Now()
	resp, body = get(t, plainClient, "http://"+addr+"/readyz", nil)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "no supernode answers")
	require.Contains(t, string(body), dead)
	require.Contains(t, string(body), "connection refused")
	require.Less(t, time.Since(start), 2*time.Second)

	require.Eventually(t, func() bool { return logs.FilterMessageSnippet("no supernode answers").Len() == 1 }, 5*time.Second, 10*time.Millisecond)
	entry := logs.FilterMessageSnippet("no supernode answers").All()[0]
	require.Equal(t, []any{"http://" + dead}, entry.ContextMap()["supernodes"])
}

// TestReadyzSupernodeAnswers: with a running supernode /readyz is 200, also
// when another listed supernode is down.
func TestReadyzSupernodeAnswers(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	d := startDaemon(t, "--node", deadAddr(t)+","+sn)
	resp, body := get(t, plainClient, "http://"+d.addr+"/readyz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "ready: supernode http://"+sn)
}

// TestReadinessBoundedAndCached: a supernode that accepts but never answers
// makes /readyz 503 within readyProbeTimeout, not a hung request; the
// answer is remembered for readyTTL, and concurrent requests share one
// probe.
func TestReadinessBoundedAndCached(t *testing.T) {
	t.Parallel()
	silent := silentAddr(t)
	r := newReadiness([]string{"http://" + silent})
	var now time.Time
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return clock }
	start := time.Now()
	res := r.check(t.Context())
	require.False(t, res.ok)
	require.Contains(t, res.detail, silent+": no answer within 1s")
	require.Less(t, time.Since(start), readyProbeTimeout+time.Second)

	now = time.Now()
	for range 10 {
		require.Equal(t, res, r.check(t.Context()), "remembered")
	}
	require.Less(t, time.Since(now), 100*time.Millisecond)

	// After readyTTL it is asked again; a request that gives up waiting
	// gets a 503 at once.
	clock = clock.Add(readyTTL)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	res = r.check(ctx)
	require.False(t, res.ok)
	require.True(t, strings.HasPrefix(res.detail, "not ready"), res.detail)
	// Let the detached probe finish before the listener goes.
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.checked.Equal(clock)
	}, 3*time.Second, 10*time.Millisecond)
}
