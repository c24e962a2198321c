package peer

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestDecidePoll(t *testing.T) {
	t.Parallel()
	apiErr := func(status int, code schedapi.ErrorCode) error {
		return fmt.Errorf("pieces: %w", &schedclient.APIError{StatusCode: status, Code: code})
	}
	tests := []struct {
		name string
		err  error
		want pollAction
	}{
		{"task unknown after a restart", apiErr(http.StatusNotFound, schedapi.CodeTaskNotFound), pollRegister},
		{"peer unknown after expiry", apiErr(http.StatusNotFound, schedapi.CodePeerNotFound), pollRegister},
		{"task failed", apiErr(http.StatusBadGateway, schedapi.CodeTaskFailed), pollGiveUp},
		{"rejected", apiErr(http.StatusBadRequest, schedapi.CodeInvalid), pollGiveUp},
		{"overloaded", apiErr(http.StatusServiceUnavailable, schedapi.CodeUnavailable), pollRetryLater},
		{"unreachable", fmt.Errorf("pieces: %w 127.0.0.1:1: connection refused", schedclient.ErrUnreachable), pollRetryLater},
		{"reset mid-answer", io.ErrUnexpectedEOF, pollRetryLater},
		{"unknown 500", apiErr(http.StatusInternalServerError, ""), pollRetryLater},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, decidePoll(tt.err))
		})
	}
}

func TestMergeInfo(t *testing.T) {
	t.Parallel()
	const d1, d2 = "sha256:1111111111111111111111111111111111111111111111111111111111111111",
		"sha256:2222222222222222222222222222222222222222222222222222222222222222"
	known := schedapi.TaskInfo{TaskID: "t", State: schedapi.TaskRunning, Size: 100, PieceSize: 10, PieceCount: 10, ContentDigest: d1}
	unknown := schedapi.TaskInfo{TaskID: "t", State: schedapi.TaskRunning, Size: -1, PieceSize: 10, PieceCount: -1}
	with := func(i schedapi.TaskInfo, f func(*schedapi.TaskInfo)) schedapi.TaskInfo { f(&i); return i }
	tests := []struct {
		name     string
		old, new schedapi.TaskInfo
		want     schedapi.TaskInfo
		err      bool
	}{
		{"same", known, known, known, false},
		{"learns size and digest", unknown, known, known, false},
		{"successor does not know them yet", known, unknown, known, false},
		{"successor knows the size only", known, with(known, func(i *schedapi.TaskInfo) { i.ContentDigest = "" }), known, false},
		{"state follows the supernode", known, with(known, func(i *schedapi.TaskInfo) { i.State = schedapi.TaskSucceeded }),
			with(known, func(i *schedapi.TaskInfo) { i.State = schedapi.TaskSucceeded }), false},
		{"task id stays", known, with(known, func(i *schedapi.TaskInfo) { i.TaskID = "other" }), known, false},
		{"piece size changed", known, with(known, func(i *schedapi.TaskInfo) { i.PieceSize = 20 }), known, true},
		{"size changed", known, with(known, func(i *schedapi.TaskInfo) { i.Size = 101 }), known, true},
		{"digest changed", known, with(known, func(i *schedapi.TaskInfo) { i.ContentDigest = d2 }), known, true},
		{"failed", known, with(unknown, func(i *schedapi.TaskInfo) { i.State, i.Error = schedapi.TaskFailed, "404" }), known, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := mergeInfo(tt.old, tt.new)
			if tt.err {
				require.ErrorIs(t, err, ErrP2PFailed)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tt.want, got)
		})
	}
}

// The supernode dies mid-download (its connections cut for a while) and
// comes back knowing nothing of the task: the engine rides out the outage,
// registers again declaring the pieces it verified, and finishes without
// fetching any piece twice.
func TestSupernodeRestartMidDownload(t *testing.T) {
	t.Parallel()
	data := randomData(t, 6*testPieceSize+5)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{Concurrency: 4}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	h.release(0)
	h.release(1)
	require.Eventually(t, func() bool { return d.Progress().Completed == 2*testPieceSize }, 5*time.Second, 5*time.Millisecond)

	f.restart()
	f.down.Store(3)
	for i := 2; i < 7; i++ {
		h.release(i)
	}
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), res.Size)
	require.Equal(t, data, readBlob(t, e.store, res.Digest))

	_, registers, _, _ := f.snapshot()
	require.GreaterOrEqual(t, len(registers), 2)
	again := registers[len(registers)-1]
	require.Equal(t, int64(testPieceSize), again.PieceSize, "pieces are declared with the size they were cut with")
	require.True(t, again.Have.Has(0) && again.Have.Has(1), "the verified pieces are declared: %v", again.Have.Indices())
	require.Equal(t, int64(7), h.requests.Load(), "no piece was fetched twice")
}

// The supernode stays away for longer than the stall timeout: without
// going back to the source the download fails as a P2P failure, and not at
// the first poll that finds the supernode gone.
func TestSupernodeGoneFailsAfterStall(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	core, logs := observer.New(zapcore.DebugLevel)
	e := newTestEngine(t, f.addr, engineSetup{
		cfg:  Config{StallTimeout: 4 * time.Second},
		opts: []Option{WithLogger(zap.New(core))},
	})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	h.release(0)
	require.Eventually(t, func() bool { return d.Progress().Completed == testPieceSize }, 5*time.Second, 5*time.Millisecond)
	f.kill()
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrP2PFailed)
	require.Contains(t, err.Error(), "no piece verified")
	failed := logs.FilterMessage("poll").FilterFieldKey("error").Len()
	// How many polls fail before the stall timeout depends on the client's
	// own bounded retries and the machine's load; at least one must have
	// failed and been retried rather than ending the download.
	require.GreaterOrEqual(t, failed, 1, "polls failing for want of a supernode are retried until the stall timeout")
}

// Two supernodes: the one owning the task (by rendezvous order) dies
// mid-download. The engine registers the task on the next one, declaring the
// pieces it verified, and finishes there.
func TestFailoverToNextSupernode(t *testing.T) {
	t.Parallel()
	data := randomData(t, 5*testPieceSize+1)
	h := newHolder(t, "gated", data, gated)
	from := func(int, int) (schedapi.Peer, bool) { return h.peer, false }
	a, b := newFakeSched(t, data, from), newFakeSched(t, data, from)
	const url = "http://origin.test/file"
	route, err := taskid.ForURL(url, nil, "")
	require.NoError(t, err)
	sc, err := schedclient.New([]string{a.addr, b.addr}, schedclient.WithClusterKeys(testKeys))
	require.NoError(t, err)
	owner, next := a, b
	if sc.Order(route)[0] != "http://"+a.addr {
		owner, next = b, a
	}
	next.restart() // it knows nothing of the task

	e := newTestEngine(t, "", engineSetup{nodes: []string{a.addr, b.addr}, cfg: Config{Concurrency: 3}})
	d, err := e.Download(t.Context(), Request{URL: url})
	require.NoError(t, err)
	defer d.Close()
	h.release(0)
	require.Eventually(t, func() bool { return d.Progress().Completed == testPieceSize }, 5*time.Second, 5*time.Millisecond)
	_, ownerRegs, _, _ := owner.snapshot()
	require.Len(t, ownerRegs, 1, "the owner got the task")

	owner.kill()
	for i := 1; i < 6; i++ {
		h.release(i)
	}
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, data, readBlob(t, e.store, res.Digest))

	_, registers, _, polls := next.snapshot()
	require.NotEmpty(t, registers, "the task moved to the next supernode")
	require.True(t, registers[0].Have.Has(0), "the moved peer declared its piece: %v", registers[0].Have.Indices())
	require.Equal(t, int64(testPieceSize), registers[0].PieceSize)
	require.Positive(t, polls)
	require.Equal(t, int64(6), h.requests.Load(), "no piece was fetched twice")
}
