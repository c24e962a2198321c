package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// The supernode's committed copy is checked, not trusted (issue 10).

// metricOf returns the value of an unlabelled metric of the process
// listening on addr (0 when absent).
func metricOf(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			require.NoError(t, err)
			return v
		}
	}
	return 0
}

// cdnBlob is the file of the CDN's committed copy of content sum.
func cdnBlob(dataDir, sum string) string {
	return filepath.Join(dataDir, "content", "blobs", "sha256", sum)
}

// flipCDNByte changes one byte of a file in place and restores its
// modification time, so that only a hash tells.
func flipCDNByte(t *testing.T, path string, off int64) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0x5a
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Chtimes(path, fi.ModTime(), fi.ModTime()))
}

// A flipped byte or a truncated file in the supernode's committed copy,
// found after a restart or under the running supernode: the next P2P-only
// dfget ends verified in seconds (no stall-timeout wait), and the CDN
// fetches the content from the origin exactly once more.
func TestCDNCopyDamaged(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const size = 10*mib + 7
	tests := []struct {
		name    string
		restart bool
		damage  func(t *testing.T, path string)
	}{
		{"flipped byte after a restart", true, func(t *testing.T, p string) { flipCDNByte(t, p, 5*mib+3) }},
		{"flipped byte under the running supernode", false, func(t *testing.T, p string) { flipCDNByte(t, p, 5*mib+3) }},
		{"truncated after a restart", true, func(t *testing.T, p string) { require.NoError(t, os.Truncate(p, 6*mib)) }},
		{"truncated under the running supernode", false, func(t *testing.T, p string) { require.NoError(t, os.Truncate(p, 6*mib)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, size, 0)
			sn := newSupernodeProc(t)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			dir := t.TempDir()
			url := o.url("damaged")

			first := startDfget(t, ctx, url, filepath.Join(dir, "first"), "--node", sn.addr, "--notbs")
			require.NoError(t, first.wait(t, time.Minute), first.stderr.String())
			require.Equal(t, o.sum, fileSHA256(t, first.out))
			served := o.served.Load()
			require.EqualValues(t, size, served)

			if tt.restart {
				sn.kill(t)
				tt.damage(t, cdnBlob(sn.dataDir, o.sum))
				sn.start(t)
			} else {
				tt.damage(t, cdnBlob(sn.dataDir, o.sum))
			}

			start := time.Now()
			again := startDfget(t, ctx, url, filepath.Join(dir, "again"), "--node", sn.addr, "--notbs", "--stall-timeout", "30s")
			require.NoError(t, again.wait(t, time.Minute), again.stderr.String())
			took := time.Since(start)
			require.Equal(t, o.sum, fileSHA256(t, again.out))
			require.Less(t, took, 15*time.Second, "no stall: the damaged copy is dropped and fetched again at once")
			require.EqualValues(t, served+size, o.served.Load(), "the CDN fetched the content from the origin once more")
			require.FileExists(t, cdnBlob(sn.dataDir, o.sum), "the CDN keeps the content again")
			if tt.restart {
				// Checked before its pieces were published: the damaged
				// copy was never served from the cache, not even once.
				require.Zero(t, metricOf(t, sn.addr, "damselfly_cdn_cache_hits_total"))
			}
			t.Logf("download after the damage took %s", took)
		})
	}
}

// A peer's corrupt report against a piece the CDN sent makes the supernode
// check its copy at once: a copy changed on disk without a trace in its
// file's metadata is removed, its task dropped, and the next dfget ends
// verified with the content fetched once more.
func TestCorruptReportAgainstCDN(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const size = 9*mib + 1
	o := newOrigin(t, size, 0)
	sn := startStoppableSupernode(t, "--log-level", "warn")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	url := o.url("reported")
	id, err := taskid.ForURL(url, nil, "")
	require.NoError(t, err)

	first := startDfget(t, ctx, url, filepath.Join(dir, "first"), "--node", sn.addr, "--notbs")
	require.NoError(t, first.wait(t, time.Minute), first.stderr.String())
	served := o.served.Load()
	// Piece 0 changes; nobody reads it until the report.
	flipCDNByte(t, cdnBlob(sn.dataDir, o.sum), 10)

	sc := peerAPIClient(t, sn.addr)
	const reporter = "reporter"
	reg, err := sc.Register(ctx, schedapi.RegisterRequest{Peer: schedapi.Peer{ID: reporter, Addr: closedAddr(t)}, URL: url})
	require.NoError(t, err)
	require.Equal(t, id.String(), reg.TaskID)
	reported := false
	for !reported && ctx.Err() == nil {
		resp, err := sc.Pieces(ctx, taskid.ID(reg.TaskID), reporter, 4, time.Second, schedapi.NoWant)
		require.NoError(t, err)
		var results []schedapi.PieceResult
		for _, a := range resp.Assignments {
			r := schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, Reason: schedapi.ReasonAborted}
			if a.FromCDN && !reported {
				r.Reason, r.Error = schedapi.ReasonCorrupt, "digest mismatch"
				reported = true
			}
			results = append(results, r)
		}
		require.NoError(t, sc.Report(ctx, taskid.ID(reg.TaskID), reporter, results))
	}
	require.Eventually(t, func() bool {
		_, err := os.Stat(cdnBlob(sn.dataDir, o.sum))
		return os.IsNotExist(err) && sn.adminGet(t, "/api/v1/tasks/"+id.String(), nil) == http.StatusNotFound
	}, 20*time.Second, 20*time.Millisecond, "the report made the CDN check, remove its copy and drop the task")

	again := startDfget(t, ctx, url, filepath.Join(dir, "again"), "--node", sn.addr, "--notbs", "--stall-timeout", "30s")
	require.NoError(t, again.wait(t, time.Minute), again.stderr.String())
	require.Equal(t, o.sum, fileSHA256(t, again.out))
	require.EqualValues(t, served+size, o.served.Load(), "fetched from the origin once more")
}
