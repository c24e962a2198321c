package task

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// origin serves body at every path and counts the requests.
func origin(t *testing.T, body []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// newManager runs a Manager over an in-memory store until the test ends.
func newManager(t *testing.T, sc scheduler.Config) *Manager {
	t.Helper()
	m, err := New(Config{Scheduler: sc.ApplyDefaults(), CDN: cdn.Config{Dir: t.TempDir()}.ApplyDefaults()},
		schedapi.Peer{ID: "supernode", Addr: "127.0.0.1:8002"}, contenttest.NewMemory(), httpsource.New())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return m
}

var member = schedapi.Peer{ID: "peer-1", Addr: "127.0.0.1:65002"}

// Register creates the task, starts its one source fetch and joins the
// peer; a second registration joins the same task without fetching again.
func TestRegisterEnsuresAndJoins(t *testing.T) {
	t.Parallel()
	body := []byte("layer content")
	srv, hits := origin(t, body)
	m := newManager(t, scheduler.Config{})
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	info, err := m.Register(t.Context(), Registration{Request: Request{TaskID: id, URL: srv.URL + "/blob", Digest: d}, Peer: member})
	require.NoError(t, err)
	require.Equal(t, id.String(), info.TaskID)
	require.Eventually(t, func() bool {
		ts, err := m.Task(t.Context(), id)
		return err == nil && ts.State == schedapi.TaskSucceeded
	}, 10*time.Second, 10*time.Millisecond)
	ts, err := m.Task(t.Context(), id)
	require.NoError(t, err)
	require.Len(t, ts.Peers, 1)
	require.Equal(t, member.ID, ts.Peers[0].ID)
	require.Equal(t, int64(len(body)), m.SourceBytes(id))

	other := schedapi.Peer{ID: "peer-2", Addr: "127.0.0.1:65003"}
	_, err = m.Register(t.Context(), Registration{Request: Request{TaskID: id, URL: srv.URL + "/elsewhere", Digest: d}, Peer: other})
	require.NoError(t, err)
	ts, err = m.Task(t.Context(), id)
	require.NoError(t, err)
	require.Len(t, ts.Peers, 2)
	require.Equal(t, int64(1), hits.Load(), "one source fetch per task")

	// The CDN serves what it stored, through the owner.
	h, err := m.Open(t.Context(), id)
	require.NoError(t, err)
	require.Equal(t, int64(len(body)), h.Size())
	require.NoError(t, h.Close())

	require.NoError(t, m.Delete(t.Context(), id))
	_, err = m.Task(t.Context(), id)
	require.ErrorIs(t, err, scheduler.ErrTaskNotFound)
}

// A registration the scheduler's bounds refuse creates no task and
// contacts no source.
func TestRegisterRefusedCreatesNothing(t *testing.T) {
	t.Parallel()
	srv, hits := origin(t, []byte("x"))
	m := newManager(t, scheduler.Config{MaxTasksPerPeer: 1})
	first, err := taskid.ForURL(srv.URL+"/a", nil, "")
	require.NoError(t, err)
	_, err = m.Register(t.Context(), Registration{Request: Request{TaskID: first, URL: srv.URL + "/a"}, Peer: member})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return hits.Load() == 1 }, 10*time.Second, 10*time.Millisecond)

	second, err := taskid.ForURL(srv.URL+"/b", nil, "")
	require.NoError(t, err)
	_, err = m.Register(t.Context(), Registration{Request: Request{TaskID: second, URL: srv.URL + "/b"}, Peer: member})
	require.ErrorIs(t, err, scheduler.ErrLimit)
	_, err = m.Task(t.Context(), second)
	require.ErrorIs(t, err, scheduler.ErrTaskNotFound)
	require.Equal(t, int64(1), hits.Load())
}

// Pieces a peer holds are kept when cut with the task's piece size, and
// dropped when cut with another.
func TestRegisterHaveNeedsTheTasksPieceSize(t *testing.T) {
	t.Parallel()
	body := []byte("some content")
	srv, _ := origin(t, body)
	m := newManager(t, scheduler.Config{})
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	req := Request{TaskID: id, URL: srv.URL + "/blob", Digest: d}
	info, err := m.Ensure(t.Context(), req)
	require.NoError(t, err)

	have := piece.NewSet(1)
	have.Add(0)
	a := schedapi.Peer{ID: "a", Addr: "127.0.0.1:1001"}
	b := schedapi.Peer{ID: "b", Addr: "127.0.0.1:1002"}
	_, err = m.Register(t.Context(), Registration{Request: req, Peer: a, Have: have, PieceSize: info.PieceSize})
	require.NoError(t, err)
	_, err = m.Register(t.Context(), Registration{Request: req, Peer: b, Have: have, PieceSize: info.PieceSize + 1})
	require.NoError(t, err)
	ts, err := m.Task(t.Context(), id)
	require.NoError(t, err)
	pieces := map[string]int{}
	for _, p := range ts.Peers {
		pieces[p.ID] = p.Pieces
	}
	require.Equal(t, map[string]int{"a": 1, "b": 0}, pieces)
}
