package scheduler

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// pollNow polls peerID in st and returns what the poll got at once (a
// poll that would park is taken back).
func pollNow(t *testing.T, st *state, w *waiter) []schedapi.Assignment {
	t.Helper()
	st.poll(w)
	st.flush()
	if !w.answered {
		st.unpark(w)
		return nil
	}
	r := <-w.reply
	require.NoError(t, r.err)
	return r.resp.Assignments
}

func TestArrivingPieceFromCDNOnly(t *testing.T) {
	t.Parallel()
	st := newTestState(t, Config{CDNPieceFanout: 2, CDNUploadSlots: 4, PeerUploadSlots: 1})
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 100, Size: 400}))
	for _, p := range []string{"a", "b", "c", "d"} {
		_, err := st.join(id, peerAt(p, 20001), nil)
		require.NoError(t, err)
	}
	poll := func(p string) []schedapi.Assignment { return pollNow(t, st, newWaiter(id, p, 4)) }

	require.Empty(t, poll("a"), "nothing published nor arriving")
	require.NoError(t, st.arrive(id, 0))
	// The fanout: two requesters get it from the CDN, marked arriving,
	// without a digest; the third waits.
	for _, p := range []string{"a", "b"} {
		got := poll(p)
		require.Len(t, got, 1, p)
		require.Equal(t, 0, got[0].Piece)
		require.True(t, got[0].Arriving && got[0].FromCDN, "%+v", got[0])
		require.Empty(t, got[0].Digest)
		require.Equal(t, cdnPeer.ID, got[0].From.ID)
		require.NoError(t, schedapi.ValidAssignmentDigest(got[0]))
	}
	a := st.tasks[id].members["a"].inflight[0]
	require.True(t, a.arriving)
	require.Equal(t, st.now().Add(st.cfg.AssignmentTimeout), a.deadline, "it comes at the origin's pace")
	require.Empty(t, poll("c"), "past the fanout")
	require.Empty(t, poll("a"), "a has it in flight")
	tk := st.tasks[id]
	require.Equal(t, 0, tk.published)

	// Published, it stops arriving: a reports it, c gets it from a with
	// its digest.
	require.NoError(t, st.publish(id, 0, pieceDigest(id, 0)))
	require.Equal(t, -1, tk.arriving)
	require.NoError(t, st.report(id, "a", []schedapi.PieceResult{{Piece: 0, From: cdnPeer.ID, OK: true}}))
	st.flush()
	got := poll("c")
	require.Len(t, got, 1)
	require.Equal(t, "a", got[0].From.ID)
	require.False(t, got[0].Arriving)
	require.Equal(t, pieceDigest(id, 0).String(), got[0].Digest)
	require.Equal(t, 1, tk.published)

	// The next piece arrives; its read fails: it is no longer assigned.
	require.NoError(t, st.arrive(id, 1))
	require.NoError(t, st.arrive(id, -1))
	for _, a := range poll("d") {
		require.NotEqual(t, 1, a.Piece, "piece 1 no longer arrives")
		require.False(t, a.Arriving)
	}
	require.Error(t, st.arrive(id, 4), "out of range")
}

func TestArrivingPieceTakesNoCDNSlot(t *testing.T) {
	t.Parallel()
	st := newTestState(t, Config{CDNPieceFanout: 16, CDNUploadSlots: 2})
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 100, Size: 400}))
	for _, p := range []string{"a", "b"} {
		_, err := st.join(id, peerAt(p, 20001), nil)
		require.NoError(t, err)
	}
	require.NoError(t, st.publish(id, 0, pieceDigest(id, 0)))
	require.NoError(t, st.publish(id, 1, pieceDigest(id, 1)))
	// Both CDN slots taken by published pieces.
	for _, p := range []string{"a", "b"} {
		got := pollNow(t, st, newWaiter(id, p, 1))
		require.Len(t, got, 1, p)
		require.False(t, got[0].Arriving)
		st.tasks[id].members[p].proven = true
	}
	require.Equal(t, 2, st.cdnBusy)
	// The arriving piece comes at the origin's pace: it takes no slot,
	// only its fanout bounds it.
	require.NoError(t, st.arrive(id, 2))
	for _, p := range []string{"a", "b"} {
		got := pollNow(t, st, newWaiter(id, p, 4))
		require.Len(t, got, 1, p)
		require.Equal(t, 2, got[0].Piece)
		require.True(t, got[0].Arriving)
	}
	require.Equal(t, 2, st.cdnBusy)
	require.Equal(t, 2, st.tasks[id].fromCDN[2])
	// Its transfers failing (aborted: the origin's read broke) give back
	// the fanout, no slot, and strike nobody.
	for _, p := range []string{"a", "b"} {
		require.NoError(t, st.report(id, p, []schedapi.PieceResult{{Piece: 2, From: cdnPeer.ID, Reason: schedapi.ReasonAborted}}))
	}
	st.flush()
	require.Equal(t, 2, st.cdnBusy)
	require.Zero(t, st.tasks[id].fromCDN[2])
	require.Len(t, pollNow(t, st, newWaiter(id, "b", 4)), 1, "it is assigned again")
}

// With a fanout of 1 (super-seeding) an arriving piece goes to one
// requester at a time.
func TestArrivingPieceSuperSeeded(t *testing.T) {
	t.Parallel()
	st := newTestState(t, Config{CDNPieceFanout: 1})
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 100, Size: 400}))
	for _, p := range []string{"a", "b"} {
		_, err := st.join(id, peerAt(p, 20001), nil)
		require.NoError(t, err)
	}
	require.NoError(t, st.arrive(id, 1))
	require.Len(t, pollNow(t, st, newWaiter(id, "a", 4)), 1)
	require.Empty(t, pollNow(t, st, newWaiter(id, "b", 4)))
}

func TestArrivingPieceNotToAHolder(t *testing.T) {
	t.Parallel()
	st := newTestState(t, Config{CDNPieceFanout: 16})
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 100, Size: 400}))
	// a declares piece 3 (it kept it across a supernode restart): nobody
	// gets it before it is published, neither from a nor from the CDN.
	_, err := st.join(id, peerAt("a", 20001), pieceSetOf(3))
	require.NoError(t, err)
	_, err = st.join(id, peerAt("b", 20002), nil)
	require.NoError(t, err)
	require.NoError(t, st.arrive(id, 3))
	require.Empty(t, pollNow(t, st, newWaiter(id, "a", 4)))
	require.Empty(t, pollNow(t, st, newWaiter(id, "b", 4)))
}

func TestCutThroughOff(t *testing.T) {
	t.Parallel()
	off := false
	st := newTestState(t, Config{CutThrough: &off})
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 100, Size: 400}))
	_, err := st.join(id, peerAt("a", 20001), nil)
	require.NoError(t, err)
	require.NoError(t, st.arrive(id, 0))
	require.Equal(t, -1, st.tasks[id].arriving)
	require.Empty(t, pollNow(t, st, newWaiter(id, "a", 4)))
	require.NoError(t, st.publish(id, 0, pieceDigest(id, 0)))
	got := pollNow(t, st, newWaiter(id, "a", 4))
	require.Len(t, got, 1)
	require.False(t, got[0].Arriving)
}
