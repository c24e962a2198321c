package scheduler

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// A corrupt report against a CDN assignment is passed to the
// WithCDNCorruptReport callback (and never strikes the CDN); other failures
// against the CDN, corrupt reports against peers and reports naming the CDN
// without an assignment are not.
func TestCDNCorruptReportCallback(t *testing.T) {
	t.Parallel()
	type call struct {
		task  taskid.ID
		piece int
	}
	var (
		mu    sync.Mutex
		calls []call
	)
	s := startScheduler(t, Config{}, WithCDNCorruptReport(func(taskID taskid.ID, piece int) {
		mu.Lock()
		calls = append(calls, call{taskID, piece})
		mu.Unlock()
	}))
	id := addTask(t, s, "cdn-corrupt", 4, 4)
	join(t, s, id, "r")
	got := func() []call {
		mu.Lock()
		defer mu.Unlock()
		return append([]call(nil), calls...)
	}

	resp, err := s.Poll(t.Context(), id, "r", 2)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 2)
	a, b := resp.Assignments[0], resp.Assignments[1]
	require.True(t, a.FromCDN)
	require.True(t, b.FromCDN)
	// A transfer failure is no integrity report.
	require.NoError(t, s.Report(t.Context(), id, "r", []schedapi.PieceResult{{Piece: b.Piece, From: cdnPeer.ID, Reason: schedapi.ReasonTransfer}}))
	// A corrupt report without an assignment is ignored.
	require.NoError(t, s.Report(t.Context(), id, "r", []schedapi.PieceResult{{Piece: 3, From: cdnPeer.ID, Reason: schedapi.ReasonCorrupt}}))
	require.NoError(t, s.Report(t.Context(), id, "r", []schedapi.PieceResult{{Piece: a.Piece, From: cdnPeer.ID, Reason: schedapi.ReasonCorrupt, Error: "digest mismatch"}}))
	require.Eventually(t, func() bool { return len(got()) == 1 }, 5*time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, []call{{id, a.Piece}}, got())

	resp, err = s.Poll(t.Context(), id, "r", 1)
	require.NoError(t, err)
	require.NotEmpty(t, resp.Assignments, "the CDN is still a source")
}
