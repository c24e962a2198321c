package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// Digest-task squatting (issue 9, finding 4): a member registers a digest
// first with its own source, which announces the right Content-Length and
// then trickles one byte a second. The victim's dfget, registering the
// same digest with the honest origin, finishes verified over P2P (--notbs)
// in at most twice its unattacked time: the CDN gives the squatter up for
// the victim's source once it has sent less than cdn.minSourceRate over
// cdn.minSourceRateWindow.
func TestSquattingSource(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const size = 24 * mib
	// A short window keeps the test quick; the rule is the default one.
	cfg := writeConfig(t, "cdn:\n  minSourceRate: 1M\n  minSourceRateWindow: 1s\n")
	sn := startSupernode(t, "--config", cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// Unattacked: the same size from an origin of the same speed.
	plain := newOrigin(t, size, 8*mib) // three seconds for one copy
	start := time.Now()
	d := startDfget(t, ctx, plain.url("plain"), filepath.Join(dir, "plain"), "--node", sn.addr, "--notbs", "--digest", "sha256:"+plain.sum)
	require.NoError(t, d.wait(t, time.Minute), d.stderr.String())
	unattacked := time.Since(start)
	require.Equal(t, plain.sum, fileSHA256(t, d.out))

	// Attacked.
	o := newOrigin(t, size, 8*mib)
	squat := startSquatter(t, size)
	sc := memberClient(t, sn.addr)
	reg, err := sc.Register(ctx, schedapi.RegisterRequest{
		Peer:   schedapi.Peer{ID: "squatter", Addr: closedAddr(t)},
		URL:    squat.URL + "/v2/library/app/blobs/sha256:" + o.sum,
		Digest: "sha256:" + o.sum,
	})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskRunning, reg.State, "the squatter's source is fetched first")

	start = time.Now()
	d = startDfget(t, ctx, o.url("victim"), filepath.Join(dir, "victim"), "--node", sn.addr, "--notbs", "--digest", "sha256:"+o.sum)
	require.NoError(t, d.wait(t, time.Minute), d.stderr.String())
	attacked := time.Since(start)
	require.Equal(t, o.sum, fileSHA256(t, d.out))
	t.Logf("unattacked %s, with a squatter registered first %s", unattacked.Round(time.Millisecond), attacked.Round(time.Millisecond))
	require.LessOrEqual(t, attacked, 2*unattacked, "the squatter slowed the download more than twice")
	require.Less(t, squat.sent.Load(), int64(1<<20), "the squatter delivered next to nothing")
	require.LessOrEqual(t, o.served.Load(), int64(size)+1<<20, "the honest origin sent one copy")
}

// memberClient is the one place this file talks to the peer API directly,
// as a member of the cluster (holding its token) would.
func memberClient(t *testing.T, node string) *schedclient.Client {
	t.Helper()
	sc, err := schedclient.New([]string{node}, schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	return sc
}

// squatterSource announces size bytes and sends one byte a second.
type squatterSource struct {
	*httptest.Server
	sent atomic.Int64
}

func startSquatter(t *testing.T, size int) *squatterSource {
	t.Helper()
	s := &squatterSource{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for range size {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(time.Second):
			}
			if _, err := w.Write([]byte{0}); err != nil {
				return
			}
			s.sent.Add(1)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(func() {
		s.CloseClientConnections()
		s.Close()
	})
	return s
}
