package scheduler

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// addTask adds a task of n pieces of 100 bytes and publishes the first
// published of them.
func addTask(t *testing.T, s *Scheduler, name string, n, published int) taskid.ID {
	t.Helper()
	id := testTaskID(name)
	require.NoError(t, s.AddTask(t.Context(), TaskSpec{ID: id, URL: "http://127.0.0.1:1/" + name, PieceSize: 100, Size: int64(n) * 100}))
	for i := range published {
		require.NoError(t, s.PublishPiece(t.Context(), id, i, pieceDigest(id, i)))
	}
	return id
}

func join(t *testing.T, s *Scheduler, task taskid.ID, peerID string, have ...int) {
	t.Helper()
	set := &piece.Set{}
	for _, i := range have {
		set.Add(i)
	}
	_, err := s.Join(t.Context(), task, peerAt(peerID, 20000+len(peerID)), set)
	require.NoError(t, err)
}

// pollAsync polls in a goroutine; the result arrives on the channel.
func pollAsync(ctx context.Context, s *Scheduler, task taskid.ID, peerID string, max int) <-chan pollReply {
	ch := make(chan pollReply, 1)
	go func() {
		resp, err := s.Poll(ctx, task, peerID, max)
		ch <- pollReply{resp: resp, err: err}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan pollReply) pollReply {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("poll did not return")
		return pollReply{}
	}
}

func TestPollParksUntilPublish(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	id := addTask(t, s, t.Name(), 3, 0)
	join(t, s, id, "r")

	ch := pollAsync(t.Context(), s, id, "r", 2)
	waitParked(t, s, id, 1)
	select {
	case r := <-ch:
		t.Fatalf("poll answered before anything was published: %+v", r)
	default:
	}
	require.NoError(t, s.PublishPiece(t.Context(), id, 1, pieceDigest(id, 1)))
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, schedapi.TaskRunning, r.resp.State)
	require.Equal(t, []schedapi.Assignment{{
		Piece: 1, Offset: 100, Length: 100, Digest: pieceDigest(id, 1).String(), From: cdnPeer, FromCDN: true,
	}}, r.resp.Assignments)
	waitParked(t, s, id, 0)
}

func TestPollEmptyOnDeadline(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	id := addTask(t, s, t.Name(), 3, 0)
	join(t, s, id, "r")
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	resp, err := s.Poll(ctx, id, "r", 4)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	require.Empty(t, resp.Assignments)
	require.Equal(t, schedapi.TaskInfo{TaskID: id.String(), State: schedapi.TaskRunning, Size: 300, PieceSize: 100, PieceCount: 3}, resp.TaskInfo)
	waitParked(t, s, id, 0) // the poll is no longer parked

	// The poll took nothing: the next one gets the piece.
	require.NoError(t, s.PublishPiece(t.Context(), id, 0, pieceDigest(id, 0)))
	resp, err = s.Poll(t.Context(), id, "r", 4)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1)
}

// TestPollWithoutWait polls with a context that is already done: an idle
// scheduler still answers it, with assignments if there are any.
func TestPollWithoutWait(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	id := addTask(t, s, t.Name(), 2, 0)
	join(t, s, id, "r")
	done, cancel := context.WithTimeout(t.Context(), 0) // a wait of zero
	defer cancel()
	var resp schedapi.PiecesResponse
	require.Eventually(t, func() bool {
		var err error
		resp, err = s.Poll(done, id, "r", 4)
		return err == nil
	}, 5*time.Second, time.Millisecond)
	require.Empty(t, resp.Assignments)
	require.Equal(t, schedapi.TaskRunning, resp.State)
	waitParked(t, s, id, 0)

	require.NoError(t, s.PublishPiece(t.Context(), id, 0, pieceDigest(id, 0)))
	require.Eventually(t, func() bool {
		var err error
		resp, err = s.Poll(done, id, "r", 4)
		return err == nil
	}, 5*time.Second, time.Millisecond)
	require.Len(t, resp.Assignments, 1)
}

// TestCancelledPollGivesAssignmentsBack: a poll answered with assignments
// whose caller hung up gives them back, so the slots and pieces are free at
// once; a poll whose wait merely ran out keeps them.
func TestCancelledPollGivesAssignmentsBack(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{CDNUploadSlots: 1})
	id := addTask(t, s, t.Name(), 2, 2)
	join(t, s, id, "r")
	answer := func() (*waiter, pollReply) {
		w := newWaiter(id, "r", 1)
		require.NoError(t, s.call(t.Context(), func() { s.st.poll(w) }))
		r := <-w.reply
		require.NoError(t, r.err)
		require.Len(t, r.resp.Assignments, 1)
		return w, r
	}

	w, r := answer()
	hungUp, cancel := context.WithCancel(t.Context())
	cancel()
	resp, err := s.deliver(hungUp, w, r)
	require.NoError(t, err)
	require.Empty(t, resp.Assignments)
	require.Equal(t, schedapi.TaskRunning, resp.State)

	w, r = answer() // the CDN slot is free again, and piece 0 with it
	require.Equal(t, 0, r.resp.Assignments[0].Piece)
	timedOut, cancel2 := context.WithTimeout(t.Context(), -time.Second)
	defer cancel2()
	resp, err = s.deliver(timedOut, w, r)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1)
	status, err := s.Task(t.Context(), id)
	require.NoError(t, err)
	require.Equal(t, 0, status.Peers[0].Pieces)
	ch := pollAsync(t.Context(), s, id, "r", 1)
	waitParked(t, s, id, 1) // the one CDN slot is taken
	require.NoError(t, s.Report(t.Context(), id, "r", []schedapi.PieceResult{{Piece: 0, From: cdnPeer.ID, OK: true}}))
	rr := receive(t, ch)
	require.NoError(t, rr.err)
	require.Equal(t, 1, rr.resp.Assignments[0].Piece)
}

func TestStateChangeWakesPollers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		apply func(ctx context.Context, s *Scheduler, id taskid.ID) error
		want  schedapi.TaskState
		err   string
	}{
		{
			name: "succeeded",
			apply: func(ctx context.Context, s *Scheduler, id taskid.ID) error {
				return s.Succeed(ctx, id, 200, digest.Digest("sha256:"+testTaskID("content")))
			},
			want: schedapi.TaskSucceeded,
		},
		{
			name: "failed",
			apply: func(ctx context.Context, s *Scheduler, id taskid.ID) error {
				return s.Fail(ctx, id, errors.New("source answered 500"))
			},
			want: schedapi.TaskFailed,
			err:  "source answered 500",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startScheduler(t, Config{})
			id := addTask(t, s, t.Name(), 2, 2)
			// Three peers hold everything published: nothing to assign.
			chans := make([]<-chan pollReply, 0, 3)
			for _, p := range []string{"p1", "p2", "p3"} {
				join(t, s, id, p, 0, 1)
				chans = append(chans, pollAsync(t.Context(), s, id, p, 4))
			}
			waitParked(t, s, id, 3)
			require.NoError(t, tt.apply(t.Context(), s, id))
			for _, ch := range chans {
				r := receive(t, ch)
				require.NoError(t, r.err)
				require.Empty(t, r.resp.Assignments)
				require.Equal(t, tt.want, r.resp.State)
				require.Equal(t, tt.err, r.resp.Error)
			}
			// Later polls answer at once: the peer holds all of a succeeded
			// task, or the task failed.
			resp, err := s.Poll(t.Context(), id, "p1", 4)
			require.NoError(t, err)
			require.Equal(t, tt.want, resp.State)
		})
	}
}

func TestSucceedAnswersPeersStillMissingPieces(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{CDNUploadSlots: 1})
	id := addTask(t, s, t.Name(), 2, 2)
	join(t, s, id, "a")
	join(t, s, id, "b")
	resp, err := s.Poll(t.Context(), id, "a", 4)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1) // the one CDN slot
	ch := pollAsync(t.Context(), s, id, "b", 4)
	waitParked(t, s, id, 1)
	require.NoError(t, s.Succeed(t.Context(), id, 200, ""))
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, schedapi.TaskSucceeded, r.resp.State)
	require.Empty(t, r.resp.Assignments)

	// b polls again: nothing free, so it parks until a reports and frees
	// the CDN slot.
	ch = pollAsync(t.Context(), s, id, "b", 4)
	waitParked(t, s, id, 1)
	a0 := resp.Assignments[0]
	require.NoError(t, s.Report(t.Context(), id, "a", []schedapi.PieceResult{{Piece: a0.Piece, From: a0.From.ID, OK: true, Bytes: a0.Length}}))
	r = receive(t, ch)
	require.NoError(t, r.err)
	require.Len(t, r.resp.Assignments, 2)
	for _, as := range r.resp.Assignments {
		if as.Piece == a0.Piece {
			require.Equal(t, "a", as.From.ID, "the piece a holds comes from a")
		} else {
			require.True(t, as.FromCDN)
		}
	}
}

func TestPeerExpiryFreesSlots(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := startScheduler(t, Config{PeerTTL: 10 * time.Second, AssignmentTimeout: time.Hour}, WithClock(clock.Now))
	id := addTask(t, s, t.Name(), 1, 1)
	join(t, s, id, "a", 0)
	join(t, s, id, "b", 0)
	join(t, s, id, "r")

	resp, err := s.Poll(t.Context(), id, "r", 1)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1)
	gone := resp.Assignments[0].From.ID
	stays := map[string]string{"a": "b", "b": "a"}[gone]
	require.NotEmpty(t, stays)

	status, err := s.Task(t.Context(), id)
	require.NoError(t, err)
	for _, p := range status.Peers {
		require.Equal(t, p.ID == gone, p.Uploading == 1, "peer %s", p.ID)
	}

	// r polls again: everything is in flight, it parks.
	ch := pollAsync(t.Context(), s, id, "r", 1)
	waitParked(t, s, id, 1)

	clock.Advance(11 * time.Second)
	for _, p := range []string{stays} {
		unknown, err := s.Heartbeat(t.Context(), p, "", []taskid.ID{id})
		require.NoError(t, err)
		require.Empty(t, unknown)
	}
	require.NoError(t, s.sweepNow(t.Context()))

	// The source expired: its slot is free, r's assignment is over, and
	// the parked poll (which kept r alive) gets the piece from the other
	// holder.
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Len(t, r.resp.Assignments, 1)
	require.Equal(t, stays, r.resp.Assignments[0].From.ID)

	peers, err := s.Peers(t.Context())
	require.NoError(t, err)
	var ids []string
	for _, p := range peers {
		ids = append(ids, p.ID)
		require.Equal(t, []string{id.String()}, p.Tasks)
	}
	require.Equal(t, []string{stays, "r"}, sortStrings(ids))

	unknown, err := s.Heartbeat(t.Context(), gone, "127.0.0.1:4000", []taskid.ID{id})
	require.NoError(t, err)
	require.Equal(t, []taskid.ID{id}, unknown, "the expired peer must register again")
	_, err = s.Poll(t.Context(), id, gone, 1)
	require.ErrorIs(t, err, ErrPeerNotFound)
}

func sortStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestAssignmentTimeoutFreesSlot(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := startScheduler(t, Config{CDNUploadSlots: 1, AssignmentTimeout: 5 * time.Second}, WithClock(clock.Now))
	id := addTask(t, s, t.Name(), 2, 2)
	join(t, s, id, "r1")
	join(t, s, id, "r2")

	resp, err := s.Poll(t.Context(), id, "r1", 4)
	require.NoError(t, err)
	require.Equal(t, 0, resp.Assignments[0].Piece)
	require.Len(t, resp.Assignments, 1)

	ch := pollAsync(t.Context(), s, id, "r2", 4)
	waitParked(t, s, id, 1)

	clock.Advance(4 * time.Second)
	require.NoError(t, s.sweepNow(t.Context()))
	select {
	case r := <-ch:
		t.Fatalf("woken before the timeout: %+v", r)
	case <-time.After(20 * time.Millisecond):
	}

	clock.Advance(2 * time.Second)
	require.NoError(t, s.sweepNow(t.Context()))
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Len(t, r.resp.Assignments, 1)
	require.True(t, r.resp.Assignments[0].FromCDN)

	// A late success report of r1 still counts: r1 holds piece 0.
	require.NoError(t, s.Report(t.Context(), id, "r1", []schedapi.PieceResult{{Piece: 0, From: cdnPeer.ID, OK: true, Bytes: 100}}))
	status, err := s.Task(t.Context(), id)
	require.NoError(t, err)
	require.Equal(t, 1, status.Peers[0].Pieces)
	require.Equal(t, int64(100), status.BytesFromCDN)
}

func TestLeaveFreesSlots(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{CDNUploadSlots: 1})
	id := addTask(t, s, t.Name(), 1, 1)
	join(t, s, id, "r1")
	join(t, s, id, "r2")

	resp, err := s.Poll(t.Context(), id, "r1", 4)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1)
	ch := pollAsync(t.Context(), s, id, "r2", 4)
	waitParked(t, s, id, 1)

	require.NoError(t, s.Leave(t.Context(), id, "r1"))
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Len(t, r.resp.Assignments, 1)
	require.True(t, r.resp.Assignments[0].FromCDN)

	_, err = s.Poll(t.Context(), id, "r1", 4)
	require.ErrorIs(t, err, ErrPeerNotFound)
	require.ErrorIs(t, s.Leave(t.Context(), id, "r1"), ErrPeerNotFound)
	require.ErrorIs(t, s.Report(t.Context(), id, "r1", nil), ErrPeerNotFound)
}

func TestSourceLeavingEndsItsAssignments(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	id := addTask(t, s, t.Name(), 1, 1)
	join(t, s, id, "a", 0)
	join(t, s, id, "r")
	resp, err := s.Poll(t.Context(), id, "r", 4)
	require.NoError(t, err)
	require.Equal(t, "a", resp.Assignments[0].From.ID)
	require.NoError(t, s.Leave(t.Context(), id, "a"))
	// r's assignment from a is over: the piece is assignable again, now
	// from the CDN.
	resp, err = s.Poll(t.Context(), id, "r", 4)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1)
	require.True(t, resp.Assignments[0].FromCDN)
}

func TestLeaveAnswersParkedPoll(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	id := addTask(t, s, t.Name(), 2, 0)
	join(t, s, id, "r")
	ch := pollAsync(t.Context(), s, id, "r", 4)
	waitParked(t, s, id, 1)
	require.NoError(t, s.Leave(t.Context(), id, "r"))
	r := receive(t, ch)
	require.ErrorIs(t, r.err, ErrPeerNotFound)

	join(t, s, id, "r")
	ch = pollAsync(t.Context(), s, id, "r", 4)
	waitParked(t, s, id, 1)
	require.NoError(t, s.RemoveTask(t.Context(), id))
	r = receive(t, ch)
	require.ErrorIs(t, r.err, ErrTaskNotFound)
}

func TestTaskLifecycleErrors(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := startScheduler(t, Config{FailedTaskTTL: 10 * time.Second}, WithClock(clock.Now))
	ctx := t.Context()
	id := addTask(t, s, t.Name(), 2, 1)
	unknown := testTaskID("unknown")

	require.ErrorIs(t, s.AddTask(ctx, TaskSpec{ID: id, PieceSize: 100, Size: 200}), ErrTaskExists)
	// A path is not a task ID: it never gets past the edge (taskid.Parse).
	_, err := taskid.Parse("../etc")
	require.ErrorIs(t, err, taskid.ErrInvalid)
	require.ErrorIs(t, s.AddTask(ctx, TaskSpec{Size: 1}), ErrInvalid)
	require.ErrorIs(t, s.AddTask(ctx, TaskSpec{ID: unknown, Size: 1, ContentDigest: "md5:x"}), ErrInvalid)
	_, err = s.Join(ctx, unknown, peerAt("p", 1), nil)
	require.ErrorIs(t, err, ErrTaskNotFound)
	_, err = s.Join(ctx, id, peerAt("bad/id", 1), nil)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = s.Join(ctx, id, peerAt(cdnPeer.ID, 1), nil)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = s.Join(ctx, id, schedapi.Peer{ID: "p"}, nil)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = s.Poll(ctx, unknown, "p", 1)
	require.ErrorIs(t, err, ErrTaskNotFound)
	_, err = s.Poll(ctx, id, "stranger", 1)
	require.ErrorIs(t, err, ErrPeerNotFound)
	require.ErrorIs(t, s.Report(ctx, unknown, "p", nil), ErrTaskNotFound)
	require.ErrorIs(t, s.Leave(ctx, unknown, "p"), ErrTaskNotFound)
	require.ErrorIs(t, s.RemoveTask(ctx, unknown), ErrTaskNotFound)
	_, err = s.TaskInfo(ctx, unknown)
	require.ErrorIs(t, err, ErrTaskNotFound)
	_, err = s.Task(ctx, unknown)
	require.ErrorIs(t, err, ErrTaskNotFound)

	require.ErrorIs(t, s.PublishPiece(ctx, id, 2, pieceDigest(id, 2)), ErrInvalid, "past the count")
	require.ErrorIs(t, s.PublishPiece(ctx, id, -1, pieceDigest(id, 0)), ErrInvalid)
	require.ErrorIs(t, s.PublishPiece(ctx, id, 1, digest.Digest("sha512:"+testTaskID("x")+testTaskID("y"))), ErrInvalid)
	require.ErrorIs(t, s.PublishPiece(ctx, id, 0, pieceDigest(id, 5)), ErrInvalid, "another digest")
	require.NoError(t, s.PublishPiece(ctx, id, 0, pieceDigest(id, 0)), "same digest again")
	require.ErrorIs(t, s.Succeed(ctx, id, 200, ""), ErrInvalid, "a piece is missing")
	require.ErrorIs(t, s.Succeed(ctx, id, 300, ""), ErrInvalid, "wrong size")
	require.ErrorIs(t, s.SetSize(ctx, id, 150), ErrInvalid, "size already known")

	join(t, s, id, "p")
	require.ErrorIs(t, s.Report(ctx, id, "p", []schedapi.PieceResult{{Piece: 0, From: cdnPeer.ID, OK: true}, {Piece: 9, From: cdnPeer.ID, OK: true}}), ErrInvalid)
	require.ErrorIs(t, s.Report(ctx, id, "p", []schedapi.PieceResult{{Piece: 0, OK: true}}), ErrInvalid)
	st, err := s.Task(ctx, id)
	require.NoError(t, err)
	require.Zero(t, st.Peers[0].Pieces, "an invalid report is not applied in part")

	// A failed task answers polls at once, refuses to succeed and is
	// replaced by AddTask.
	require.NoError(t, s.Fail(ctx, id, errors.New("boom")))
	require.NoError(t, s.Fail(ctx, id, errors.New("again")))
	resp, err := s.Poll(ctx, id, "p", 1)
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskFailed, resp.State)
	require.Equal(t, "boom", resp.Error)
	require.ErrorIs(t, s.Succeed(ctx, id, 200, ""), ErrInvalid)
	require.ErrorIs(t, s.PublishPiece(ctx, id, 1, pieceDigest(id, 1)), ErrInvalid)

	require.NoError(t, s.AddTask(ctx, TaskSpec{ID: id, PieceSize: 100, Size: 200}))
	info, err := s.TaskInfo(ctx, id)
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskRunning, info.State)
	_, err = s.Poll(ctx, id, "p", 1)
	require.ErrorIs(t, err, ErrPeerNotFound, "members of the replaced task register again")

	// A failed task is forgotten after FailedTaskTTL.
	require.NoError(t, s.Fail(ctx, id, nil))
	clock.Advance(9 * time.Second)
	require.NoError(t, s.sweepNow(ctx))
	_, err = s.TaskInfo(ctx, id)
	require.NoError(t, err)
	clock.Advance(2 * time.Second)
	require.NoError(t, s.sweepNow(ctx))
	_, err = s.TaskInfo(ctx, id)
	require.ErrorIs(t, err, ErrTaskNotFound)

	// A succeeded task cannot fail and is not replaced.
	id2 := addTask(t, s, "second", 1, 1)
	require.NoError(t, s.Succeed(ctx, id2, 100, ""))
	require.NoError(t, s.Succeed(ctx, id2, 100, ""), "succeeding twice is fine")
	require.ErrorIs(t, s.Fail(ctx, id2, errors.New("late")), ErrInvalid)
	require.ErrorIs(t, s.AddTask(ctx, TaskSpec{ID: id2, Size: 100}), ErrTaskExists)
}

func TestUnknownSizeTask(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	ctx := t.Context()
	id := testTaskID(t.Name())
	require.NoError(t, s.AddTask(ctx, TaskSpec{ID: id, PieceSize: 100, Size: -1}))
	info, err := s.TaskInfo(ctx, id)
	require.NoError(t, err)
	require.Equal(t, int64(-1), info.Size)
	require.Equal(t, -1, info.PieceCount)

	// Pieces arrive out of order; a peer declares a piece not yet
	// published, which is ignored while the count is unknown.
	for _, i := range []int{1, 0} {
		require.NoError(t, s.PublishPiece(ctx, id, i, pieceDigest(id, i)))
	}
	join(t, s, id, "a", 0, 2)
	join(t, s, id, "r")
	resp, err := s.Poll(ctx, id, "r", 8)
	require.NoError(t, err)
	require.Equal(t, []schedapi.Assignment{
		{Piece: 1, Offset: 100, Length: 100, Digest: pieceDigest(id, 1).String(), From: cdnPeer, FromCDN: true},
		{Piece: 0, Offset: 0, Length: 100, Digest: pieceDigest(id, 0).String(), From: peerAt("a", 20001)},
	}, resp.Assignments)

	require.NoError(t, s.PublishPiece(ctx, id, 2, pieceDigest(id, 2)))
	require.NoError(t, s.Succeed(ctx, id, 230, digestOf("whole")))
	info, err = s.TaskInfo(ctx, id)
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskInfo{TaskID: id.String(), State: schedapi.TaskSucceeded, Size: 230, PieceSize: 100, PieceCount: 3, ContentDigest: digestOf("whole").String(),
		PiecesDigest: piece.ListDigest([]digest.Digest{pieceDigest(id, 0), pieceDigest(id, 1), pieceDigest(id, 2)}).String()}, info)
	resp, err = s.Poll(ctx, id, "r", 8)
	require.NoError(t, err)
	require.Equal(t, []schedapi.Assignment{
		{Piece: 2, Offset: 200, Length: 30, Digest: pieceDigest(id, 2).String(), From: cdnPeer, FromCDN: true},
	}, resp.Assignments)
}

func TestAdminStatus(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := startScheduler(t, Config{}, WithClock(clock.Now))
	ctx := t.Context()
	id := testTaskID(t.Name())
	require.NoError(t, s.AddTask(ctx, TaskSpec{
		ID: id, URL: "https://user:secret@127.0.0.1:9/blob?X-Amz-Signature=abc&part=1", PieceSize: 100, Size: 300,
	}))
	for i := range 3 {
		require.NoError(t, s.PublishPiece(ctx, id, i, pieceDigest(id, i)))
	}
	join(t, s, id, "a", 0, 1)
	join(t, s, id, "b")
	resp, err := s.Poll(ctx, id, "b", 3)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 3)
	var results []schedapi.PieceResult
	for _, as := range resp.Assignments {
		results = append(results, schedapi.PieceResult{Piece: as.Piece, From: as.From.ID, OK: true, Bytes: as.Length})
	}
	require.NoError(t, s.Report(ctx, id, "b", results))

	tasks, err := s.Tasks(ctx)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	ts := tasks[0]
	require.Equal(t, "https://127.0.0.1:9/blob", ts.URL)
	require.NotContains(t, ts.URL, "secret")
	require.Equal(t, 3, ts.Published)
	require.Equal(t, int64(100), ts.BytesFromCDN)
	require.Equal(t, int64(200), ts.BytesFromPeers)
	require.Equal(t, clock.Now(), ts.CreatedAt)
	require.Equal(t, []PeerState{
		{ID: "a", Addr: "127.0.0.1:20001", Pieces: 2, LastSeen: clock.Now()},
		{ID: "b", Addr: "127.0.0.1:20001", Pieces: 3, LastSeen: clock.Now()},
	}, ts.Peers)

	// Join again refreshes the address and adds declared pieces.
	_, err = s.Join(ctx, id, peerAt("a", 30000), pieceSetOf(2))
	require.NoError(t, err)
	one, err := s.Task(ctx, id)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:30000", one.Peers[0].Addr)
	require.Equal(t, 3, one.Peers[0].Pieces)

	peers, err := s.Peers(ctx)
	require.NoError(t, err)
	require.Equal(t, []PeerStatus{
		{ID: "a", Addr: "127.0.0.1:30000", Tasks: []string{id.String()}, LastSeen: clock.Now()},
		{ID: "b", Addr: "127.0.0.1:20001", Tasks: []string{id.String()}, LastSeen: clock.Now()},
	}, peers)
}

func pieceSetOf(idx ...int) *piece.Set {
	s := &piece.Set{}
	for _, i := range idx {
		s.Add(i)
	}
	return s
}

func digestOf(s string) digest.Digest { return piece.Digest([]byte(s)) }

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	ctx := t.Context()
	id := addTask(t, s, t.Name(), 1, 1)
	other := testTaskID("other")
	join(t, s, id, "p")
	unknown, err := s.Heartbeat(ctx, "p", "127.0.0.1:7000", []taskid.ID{id, other})
	require.NoError(t, err)
	require.Equal(t, []taskid.ID{other}, unknown)
	unknown, err = s.Heartbeat(ctx, "nobody", "", []taskid.ID{id})
	require.NoError(t, err)
	require.Equal(t, []taskid.ID{id}, unknown)
	_, err = s.Heartbeat(ctx, "bad/id", "", nil)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = s.Heartbeat(ctx, "p", "not-an-addr", nil)
	require.ErrorIs(t, err, ErrInvalid)
	peers, err := s.Peers(ctx)
	require.NoError(t, err)
	require.Len(t, peers, 1, "a heartbeat without an address creates no peer")
	require.Equal(t, "127.0.0.1:7000", peers[0].Addr)
}

func TestStoppedScheduler(t *testing.T) {
	t.Parallel()
	s, err := New(Config{}, cdnPeer)
	require.NoError(t, err)

	// Before Run, calls wait for ctx.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err = s.TaskInfo(ctx, testTaskID("x"))
	require.ErrorIs(t, err, context.DeadlineExceeded)

	runCtx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	id := addTask(t, s, t.Name(), 1, 0)
	join(t, s, id, "r")
	ch := pollAsync(t.Context(), s, id, "r", 1)
	waitParked(t, s, id, 1)
	stop()
	require.NoError(t, <-done)

	r := receive(t, ch)
	require.ErrorIs(t, r.err, ErrClosed)
	require.ErrorIs(t, s.AddTask(t.Context(), TaskSpec{ID: testTaskID("y"), Size: 1}), ErrClosed)
	require.ErrorIs(t, s.Run(t.Context()), ErrClosed, "Run runs once")
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := startScheduler(t, Config{StrikeLimit: 1}, WithMetrics(reg))
	ctx := t.Context()
	id := addTask(t, s, t.Name(), 2, 2)
	join(t, s, id, "a", 0, 1)
	join(t, s, id, "r")
	resp, err := s.Poll(ctx, id, "r", 1)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1)

	_, err = s.TaskInfo(ctx, id) // one more event, so the gauges are current
	require.NoError(t, err)
	require.InDelta(t, 1, metricValue(t, s.st.m.inflight), 0)
	require.InDelta(t, 2, metricValue(t, s.st.m.peers), 0)
	require.InDelta(t, 1, metricValue(t, s.st.m.tasks.WithLabelValues("running")), 0)
	require.InDelta(t, 1, metricValue(t, s.st.m.assignments.WithLabelValues("peer")), 0)

	as := resp.Assignments[0]
	require.NoError(t, s.Report(ctx, id, "r", []schedapi.PieceResult{{Piece: as.Piece, From: "a", Reason: schedapi.ReasonTransfer, Error: "timeout"}}))
	require.NoError(t, s.Fail(ctx, id, errors.New("x")))
	_, err = s.TaskInfo(ctx, id)
	require.NoError(t, err)
	require.InDelta(t, 0, metricValue(t, s.st.m.inflight), 0)
	require.InDelta(t, 1, metricValue(t, s.st.m.struck), 0)
	require.InDelta(t, 1, metricValue(t, s.st.m.strikes.WithLabelValues("transfer")), 0)
	require.InDelta(t, 0, metricValue(t, s.st.m.tasks.WithLabelValues("running")), 0)
	require.InDelta(t, 1, metricValue(t, s.st.m.tasks.WithLabelValues("failed")), 0)

	families, err := reg.Gather()
	require.NoError(t, err)
	series := map[string]int{}
	for _, f := range families {
		series[f.GetName()] = len(f.GetMetric())
	}
	require.Equal(t, 2, series["damselfly_scheduler_assignments_total"])     // cdn, peer
	require.Equal(t, 3, series["damselfly_scheduler_strikes_total"])         // transfer, missing, integrity
	require.Equal(t, 3, series["damselfly_scheduler_tasks"])                 // by state
	require.Equal(t, 1, series["damselfly_scheduler_assignments_in_flight"]) //
	require.Equal(t, 1, series["damselfly_scheduler_struck_out_total"])      //

	// Registering twice on one registry fails.
	_, err = New(Config{}, cdnPeer, WithMetrics(reg))
	require.Error(t, err)
}

// TestTickerExpiresPeers runs the real ticker on a fake clock: a silent
// peer is gone after PeerTTL, one that keeps polling is not.
func TestTickerExpiresPeers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s, err := New(Config{PeerTTL: 2 * time.Second}, cdnPeer)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()

		id := addTask(t, s, t.Name(), 1, 0)
		join(t, s, id, "silent")
		join(t, s, id, "waiting")
		pollCtx, pollCancel := context.WithTimeout(ctx, 5*time.Second)
		ch := pollAsync(pollCtx, s, id, "waiting", 1)

		time.Sleep(3 * time.Second)
		synctest.Wait()
		peers, err := s.Peers(ctx)
		require.NoError(t, err)
		require.Len(t, peers, 1)
		require.Equal(t, "waiting", peers[0].ID, "a peer in a long poll is alive")

		r := <-ch // the poll's own deadline
		require.NoError(t, r.err)
		require.Empty(t, r.resp.Assignments)
		pollCancel()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		peers, err = s.Peers(ctx)
		require.NoError(t, err)
		require.Empty(t, peers)

		cancel()
		require.NoError(t, <-done)
	})
}

// metricValue reads the value of a single-series gauge or counter.
func metricValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	require.NoError(t, (<-ch).Write(&m))
	if m.Gauge != nil {
		return m.GetGauge().GetValue()
	}
	return m.GetCounter().GetValue()
}
