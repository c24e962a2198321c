package scheduler

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Tests of the scheduler against members that abuse it: hoarders, liars
// about corruption, floods of tasks.

// abuseState is a state driven directly by a test, with its clock.
type abuseState struct {
	*state
	clock *fakeClock
	t     *task
}

// newAbuseState returns a state with one running task of n published pieces
// of pieceSize bytes, and members joined with what they hold.
func newAbuseState(t *testing.T, cfg Config, n int, pieceSize int64, startReports bool, members map[string][]int) *abuseState {
	t.Helper()
	cfg = cfg.ApplyDefaults()
	require.NoError(t, cfg.Validate())
	pol, err := newPolicy(cfg.Policy)
	require.NoError(t, err)
	m, err := newMetrics(nil)
	require.NoError(t, err)
	clock := newFakeClock()
	st := newState(cfg, cdnPeer, pol, clock.Now, zap.NewNop(), m)
	st.startReports = startReports
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: pieceSize, Size: int64(n) * pieceSize}))
	for i := range n {
		require.NoError(t, st.publish(id, i, pieceDigest(id, i)))
	}
	port := 30000
	for name, have := range members {
		port++
		set := &piece.Set{}
		for _, i := range have {
			set.Add(i)
		}
		_, err := st.join(id, peerAt(name, port), set)
		require.NoError(t, err)
	}
	return &abuseState{state: st, clock: clock, t: st.tasks[id]}
}

func (a *abuseState) poll(t *testing.T, peerID string, max int) []schedapi.Assignment {
	t.Helper()
	w := newWaiter(a.t.id, peerID, max)
	a.state.poll(w)
	a.flush()
	if !w.answered {
		a.unpark(w)
	}
	r := <-w.reply
	require.NoError(t, r.err)
	return r.resp.Assignments
}

func (a *abuseState) report(t *testing.T, peerID string, results ...schedapi.PieceResult) {
	t.Helper()
	require.NoError(t, a.state.report(a.t.id, peerID, results))
	a.flush()
}

func (a *abuseState) advance(d time.Duration) {
	a.clock.Advance(d)
	a.sweep()
	a.flush()
}

// A requester asking for everything gets at most maxOutstanding
// assignments in flight, and more only as it reports.
func TestMaxOutstanding(t *testing.T) {
	t.Parallel()
	a := newAbuseState(t, Config{MaxOutstanding: 3}, 10, 100, false, map[string][]int{"r": nil})
	got := a.poll(t, "r", schedapi.MaxAssignments)
	require.Len(t, got, 3)
	require.Empty(t, a.poll(t, "r", schedapi.MaxAssignments), "at the cap: nothing more")
	a.report(t, "r", schedapi.PieceResult{Piece: got[0].Piece, From: got[0].From.ID, OK: true})
	require.Len(t, a.poll(t, "r", schedapi.MaxAssignments), 1, "one reported, one more")

	// A parked poll at the cap is answered when an assignment ends.
	w := newWaiter(a.t.id, "r", schedapi.MaxAssignments)
	a.state.poll(w)
	a.flush()
	require.False(t, w.answered)
	a.report(t, "r", schedapi.PieceResult{Piece: got[1].Piece, From: got[1].From.ID, OK: true})
	require.True(t, w.answered)
	require.Len(t, (<-w.reply).resp.Assignments, 1)
}

// An assignment times out at its piece's transfer time at minPieceRate plus
// the grace, not at assignmentTimeout; a requester that reported a slow
// download rate gets longer.
func TestAssignmentDeadlineFromPieceSize(t *testing.T) {
	t.Parallel()
	cfg := Config{MinPieceRate: 1 << 20, AssignmentGrace: time.Second, AssignmentTimeout: time.Minute, StrikeLimit: 100}
	a := newAbuseState(t, cfg, 4, 2<<20, false, map[string][]int{"r": nil, "s": {0, 1, 2, 3}})
	got := a.poll(t, "r", 1)
	require.Len(t, got, 1)
	a.advance(2900 * time.Millisecond)
	require.Len(t, a.t.members["r"].inflight, 1, "2 MiB at 1 MiB/s plus 1s: 3s")
	require.Equal(t, 1, a.t.members["s"].peer.uploading)
	a.advance(200 * time.Millisecond)
	require.Empty(t, a.t.members["r"].inflight, "timed out at 3s, not 1m")
	require.Zero(t, a.t.members["s"].peer.uploading, "the source's slot is free again")
	require.Equal(t, 1, a.t.strikes["r"].unused)
}

// With start reports, a CDN assignment whose transfer does not start within
// cdnStartGrace is revoked; a started one runs to its transfer deadline.
func TestCDNStartGrace(t *testing.T) {
	t.Parallel()
	cfg := Config{CDNStartGrace: time.Second, AssignmentGrace: 5 * time.Second, StrikeLimit: 100}
	a := newAbuseState(t, cfg, 4, 100, true, map[string][]int{"r": nil})
	a.t.members["r"].proven = true // else it gets one at a time (TestCDNLapse)
	got := a.poll(t, "r", 2)
	require.Len(t, got, 2)
	require.True(t, got[0].FromCDN)
	require.Equal(t, 2, a.cdnBusy)
	// The CDN starts sending the first piece only.
	a.started(a.t.id, "r", got[0].Offset, got[0].Length)
	a.advance(time.Second)
	require.Equal(t, 1, a.cdnBusy, "the piece never started is revoked")
	require.Contains(t, a.t.members["r"].inflight, got[0].Piece)
	require.NotContains(t, a.t.members["r"].inflight, got[1].Piece)
	a.advance(4 * time.Second)
	require.Equal(t, 1, a.cdnBusy, "the started one runs to its transfer deadline")
	a.advance(time.Second)
	require.Zero(t, a.cdnBusy)

	// Start reports for what is not a CDN assignment in flight are ignored.
	a.started(a.t.id, "nobody", 0, 100)
	a.started("unknown", "r", 0, 100)
	a.started(a.t.id, "r", -1, 0)
}

// Hoarders poll for everything and never fetch: their assignments are
// revoked within the CDN's start grace, they are barred from the task, and
// an honest requester arriving after them gets the pieces.
func TestHoardersBarred(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		startReports bool
		// wait is how long until the hoarders' assignments end.
		wait time.Duration
	}{
		{name: "revoked unstarted", startReports: true, wait: 2 * time.Second},
		{name: "timed out", startReports: false, wait: 5*time.Second + 100*time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			members := map[string][]int{"honest": nil}
			for i := range 20 {
				members[fmt.Sprintf("hoarder-%02d", i)] = nil
			}
			a := newAbuseState(t, Config{}, 8, 100, tt.startReports, members)
			hoard := func() {
				for i := range 20 {
					a.poll(t, fmt.Sprintf("hoarder-%02d", i), schedapi.MaxAssignments)
				}
			}
			hoard()
			require.Equal(t, 8, a.cdnBusy, "the hoarders took every piece from the CDN (super-seeding: one copy at a time)")
			w := newWaiter(a.t.id, "honest", 8)
			a.state.poll(w)
			a.flush()
			require.False(t, w.answered, "nothing left for the honest requester")

			a.advance(tt.wait)
			require.True(t, w.answered, "the honest requester is served once the hoarders' assignments end")
			r := <-w.reply
			require.NotEmpty(t, r.resp.Assignments)
			for _, as := range r.resp.Assignments {
				a.report(t, "honest", schedapi.PieceResult{Piece: as.Piece, From: as.From.ID, OK: true})
			}
			// They keep at it, and lose again.
			hoard()
			a.advance(tt.wait)
			barred := 0
			for id, rec := range a.t.strikes {
				if rec.barred {
					require.NotEqual(t, "honest", id)
					barred++
					require.Empty(t, a.t.members[id].inflight)
					require.Empty(t, a.poll(t, id, schedapi.MaxAssignments), "%s is barred", id)
				}
			}
			require.Positive(t, barred)
		})
	}
}

// A requester whose assignments went unused now and then, but who reports
// more than it loses, is not barred.
func TestUnusedNotBarredWhenUsed(t *testing.T) {
	t.Parallel()
	cfg := Config{AssignmentGrace: time.Second, MinPieceRate: 1 << 30}
	a := newAbuseState(t, cfg, 10, 100, false, map[string][]int{"r": nil})
	for range 3 {
		got := a.poll(t, "r", 1)
		require.Len(t, got, 1)
		a.report(t, "r", schedapi.PieceResult{Piece: got[0].Piece, From: got[0].From.ID, OK: true})
	}
	require.Len(t, a.poll(t, "r", 2), 2)
	a.advance(1100 * time.Millisecond)
	require.Equal(t, 2, a.t.strikes["r"].unused)
	require.False(t, a.t.strikes["r"].barred)
	require.NotEmpty(t, a.poll(t, "r", 1))
}

// A corrupt report is evidence: one does not strike a source, the reporter
// alone stops fetching from it; a second requester's corroborates it; a
// requester whose reports others contradict is barred instead.
func TestCorruptReports(t *testing.T) {
	t.Parallel()
	corrupt := func(i int, from string) schedapi.PieceResult {
		return schedapi.PieceResult{Piece: i, From: from, Reason: schedapi.ReasonCorrupt, Error: "digest mismatch"}
	}
	ok := func(i int, from string) schedapi.PieceResult {
		return schedapi.PieceResult{Piece: i, From: from, OK: true}
	}
	// fetch has requester r poll once for a piece from source s; it fails
	// the test if the scheduler sends it elsewhere.
	fetch := func(t *testing.T, a *abuseState, r, s string) int {
		t.Helper()
		got := a.poll(t, r, 1)
		require.Len(t, got, 1)
		require.Equal(t, s, got[0].From.ID)
		return got[0].Piece
	}

	t.Run("one false report does not strike the seeder", func(t *testing.T) {
		t.Parallel()
		a := newAbuseState(t, Config{}, 4, 100, false, map[string][]int{"seed": {0, 1, 2, 3}, "liar": nil, "honest": nil})
		i := fetch(t, a, "liar", "seed")
		a.report(t, "liar", corrupt(i, "seed"))
		require.False(t, a.t.isStruck("seed"))
		got := a.poll(t, "liar", 4)
		require.NotEmpty(t, got)
		for _, g := range got {
			require.True(t, g.FromCDN, "the reporter is not sent to the source it reported")
		}
		require.Equal(t, "seed", a.poll(t, "honest", 1)[0].From.ID, "others still are")
	})

	t.Run("two requesters corroborate", func(t *testing.T) {
		t.Parallel()
		a := newAbuseState(t, Config{}, 4, 100, false, map[string][]int{"bad": {0, 1, 2, 3}, "r1": nil, "r2": nil})
		a.report(t, "r1", corrupt(fetch(t, a, "r1", "bad"), "bad"))
		require.False(t, a.t.isStruck("bad"))
		a.report(t, "r2", corrupt(fetch(t, a, "r2", "bad"), "bad"))
		require.True(t, a.t.isStruck("bad"), "a second requester corroborates the first")
		require.False(t, a.t.strikes["r1"].barred)
		require.False(t, a.t.strikes["r2"].barred)
	})

	t.Run("one requester reporting twice is not corroboration", func(t *testing.T) {
		t.Parallel()
		a := newAbuseState(t, Config{}, 4, 100, false, map[string][]int{"seed": {0, 1, 2, 3}, "liar": nil})
		i := fetch(t, a, "liar", "seed")
		a.report(t, "liar", corrupt(i, "seed"))
		// Reports of pieces it was not sent to the seeder for count nothing.
		a.report(t, "liar", corrupt((i+1)%4, "seed"), corrupt((i+2)%4, "seed"))
		require.False(t, a.t.isStruck("seed"))
	})

	t.Run("a lying reporter is barred", func(t *testing.T) {
		t.Parallel()
		a := newAbuseState(t, Config{StrikeLimit: 2}, 4, 100, false,
			map[string][]int{"s1": {0, 1, 2, 3}, "s2": {0, 1, 2, 3}, "liar": nil, "honest": nil})
		// The liar reports a piece of each seeder corrupt; the honest
		// requester verifies the same pieces from the same seeders.
		for k, src := range []string{"s1", "s2"} {
			a.startAssignment(a.t, a.t.members["liar"], k, a.t.members[src])
			a.report(t, "liar", corrupt(k, src))
			require.False(t, a.t.isStruck(src))
			a.startAssignment(a.t, a.t.members["honest"], k, a.t.members[src])
			a.report(t, "honest", ok(k, src))
		}
		require.True(t, a.t.strikes["liar"].barred, "two reports contradicted")
		require.False(t, a.t.isStruck("s1"))
		require.False(t, a.t.isStruck("s2"))
		require.Empty(t, a.poll(t, "liar", 4), "a barred requester gets nothing")
		// Its reports are ignored: with it barred, one more requester's
		// report is not corroborated by the liar's.
		a.report(t, "liar", corrupt(0, "s1"))
		require.False(t, a.t.isStruck("s1"))
	})

	t.Run("a report contradicted by an earlier verification", func(t *testing.T) {
		t.Parallel()
		a := newAbuseState(t, Config{StrikeLimit: 1}, 1, 100, false, map[string][]int{"seed": {0}, "honest": nil, "liar": nil})
		a.report(t, "honest", ok(fetch(t, a, "honest", "seed"), "seed"))
		a.report(t, "liar", corrupt(fetch(t, a, "liar", "seed"), "seed"))
		require.True(t, a.t.strikes["liar"].barred)
		require.False(t, a.t.isStruck("seed"))
	})
}

// The scheduler knows at most maxTasks tasks and a peer is in at most
// maxTasksPerPeer; beyond, ErrLimit.
func TestTaskBounds(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{MaxTasks: 3, MaxTasksPerPeer: 2})
	ctx := t.Context()
	var ids []taskid.ID
	for i := range 3 {
		ids = append(ids, addTask(t, s, fmt.Sprintf("%s/%d", t.Name(), i), 1, 1))
	}
	err := s.AddTask(ctx, TaskSpec{ID: testTaskID(t.Name() + "/3"), Size: 1})
	require.ErrorIs(t, err, ErrLimit)

	require.ErrorIs(t, s.Admit(ctx, testTaskID(t.Name()+"/3"), "p"), ErrLimit, "a fourth task")
	require.NoError(t, s.Admit(ctx, ids[0], "p"))
	join(t, s, ids[0], "p")
	join(t, s, ids[1], "p")
	join(t, s, ids[1], "p") // again: not a new task
	require.NoError(t, s.Admit(ctx, ids[1], "p"))
	require.ErrorIs(t, s.Admit(ctx, ids[2], "p"), ErrLimit)
	_, err = s.Join(ctx, ids[2], peerAt("p", 1), nil)
	require.ErrorIs(t, err, ErrLimit)
	join(t, s, ids[2], "q")
	require.NoError(t, s.Leave(ctx, ids[0], "p"))
	join(t, s, ids[2], "p")

	// A failed task makes room for its replacement.
	require.NoError(t, s.Fail(ctx, ids[0], fmt.Errorf("gone")))
	require.NoError(t, s.AddTask(ctx, TaskSpec{ID: ids[0], Size: 1}))
}

// A succeeded task without members for idleTaskTTL is forgotten and the
// callback told; a running one, or one with members, is kept; a failed one
// is forgotten after failedTaskTTL without the callback.
func TestIdleTasksForgotten(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var mu sync.Mutex
	var forgotten []taskid.ID
	done := make(chan struct{}, 10)
	s := startScheduler(t, Config{IdleTaskTTL: time.Minute, FailedTaskTTL: time.Minute, PeerTTL: time.Hour}, WithClock(clock.Now),
		WithTaskForgotten(func(id taskid.ID) {
			mu.Lock()
			forgotten = append(forgotten, id)
			mu.Unlock()
			done <- struct{}{}
		}))
	ctx := t.Context()
	idle := addTask(t, s, t.Name()+"/idle", 1, 1)
	require.NoError(t, s.Succeed(ctx, idle, 100, ""))
	busy := addTask(t, s, t.Name()+"/busy", 1, 1)
	require.NoError(t, s.Succeed(ctx, busy, 100, ""))
	running := addTask(t, s, t.Name()+"/running", 1, 1)
	failed := addTask(t, s, t.Name()+"/failed", 1, 1)
	require.NoError(t, s.Fail(ctx, failed, fmt.Errorf("origin gone")))
	join(t, s, idle, "p")
	join(t, s, busy, "p")
	clock.Advance(2 * time.Minute)
	require.NoError(t, s.sweepNow(ctx))
	_, err := s.TaskInfo(ctx, failed)
	require.ErrorIs(t, err, ErrTaskNotFound, "failed and forgotten")
	require.NoError(t, s.Leave(ctx, idle, "p"))
	clock.Advance(59 * time.Second)
	require.NoError(t, s.sweepNow(ctx))
	_, err = s.TaskInfo(ctx, idle)
	require.NoError(t, err, "empty for less than idleTaskTTL")

	clock.Advance(time.Second)
	require.NoError(t, s.sweepNow(ctx))
	_, err = s.TaskInfo(ctx, idle)
	require.ErrorIs(t, err, ErrTaskNotFound)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("callback not called")
	}
	for _, id := range []taskid.ID{busy, running} {
		_, err = s.TaskInfo(ctx, id)
		require.NoError(t, err)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []taskid.ID{idle}, forgotten)
}

// The CDN's start reports reach the scheduler through TransferStarted.
func TestTransferStartedKeepsAssignment(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := startScheduler(t, Config{CDNStartGrace: time.Second}, WithClock(clock.Now), WithStartReports())
	ctx := t.Context()
	id := addTask(t, s, t.Name(), 2, 2)
	join(t, s, id, "r")
	resp, err := s.Poll(ctx, id, "r", 2)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1, "one CDN assignment until a transfer starts")
	first := resp.Assignments[0]
	require.NoError(t, s.TransferStarted(context.Background(), id, "r", first.Offset, first.Length))
	resp, err = s.Poll(ctx, id, "r", 2)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 1, "the rest, now that it fetches")
	clock.Advance(time.Second)
	require.NoError(t, s.sweepNow(ctx))
	st, err := s.Task(ctx, id)
	require.NoError(t, err)
	inflight, err := do(ctx, s, func() (int, error) { return len(s.st.tasks[id].members["r"].inflight), nil })
	require.NoError(t, err)
	require.Equal(t, 1, inflight, "the started assignment stays, the other is revoked")
	require.Len(t, st.Peers, 1)
}

// A CDN assignment not started within cdnLapse gives its slot and its
// piece's fanout back, and its requester gets nothing more from the CDN
// until it starts: the piece goes to the next requester at once. Starting
// late takes the slot again.
func TestCDNLapse(t *testing.T) {
	t.Parallel()
	cfg := Config{CDNStartGrace: 2 * time.Second, CDNPieceFanout: 1}
	a := newAbuseState(t, cfg, 1, 100, true, map[string][]int{"hoarder": nil, "honest": nil})
	require.Equal(t, 100*time.Millisecond, a.cfg.cdnLapse())
	got := a.poll(t, "hoarder", 4)
	require.Len(t, got, 1)
	require.Empty(t, a.poll(t, "honest", 4), "super-seeding: one copy at a time")

	w := newWaiter(a.t.id, "honest", 4)
	a.state.poll(w)
	a.flush()
	a.clock.Advance(100 * time.Millisecond)
	a.lapseDue()
	a.flush()
	require.True(t, w.answered, "the lapsed piece goes to the parked requester")
	require.Len(t, (<-w.reply).resp.Assignments, 1)
	require.Equal(t, 1, a.cdnBusy)
	require.Equal(t, 1, a.t.members["hoarder"].lapsed)

	// The hoarder's late start takes a slot again.
	a.started(a.t.id, "hoarder", 0, 100)
	require.Equal(t, 2, a.cdnBusy)
	require.Zero(t, a.t.members["hoarder"].lapsed)
	a.report(t, "hoarder", schedapi.PieceResult{Piece: 0, From: cdnPeer.ID, OK: true})
	require.Equal(t, 1, a.cdnBusy)
}
