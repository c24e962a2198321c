package scheduler

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func pieces(as []schedapi.Assignment) []int {
	out := make([]int, len(as))
	for k, a := range as {
		out[k] = a.Piece
	}
	return out
}

// TestPollWantedFirst: the pieces a poll wants come before the rarer ones,
// and a background cap holds.
func TestPollWantedFirst(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	id := addTask(t, s, t.Name(), 20, 20)
	join(t, s, id, "r")

	resp, err := s.PollWant(t.Context(), id, "r", 3, schedapi.Want{Pieces: []int{12, 17}, Background: -1})
	require.NoError(t, err)
	got := pieces(resp.Assignments)
	require.Len(t, got, 3)
	require.Equal(t, []int{12, 17}, got[:2], "wanted pieces first")

	// Wanted only: nothing else, even with room.
	resp, err = s.PollWant(t.Context(), id, "r", 8, schedapi.Want{Pieces: []int{5}, Background: 0})
	require.NoError(t, err)
	require.Equal(t, []int{5}, pieces(resp.Assignments))

	// A background cap of 2 beside one wanted piece.
	resp, err = s.PollWant(t.Context(), id, "r", 8, schedapi.Want{Pieces: []int{9}, Background: 2})
	require.NoError(t, err)
	got = pieces(resp.Assignments)
	require.Len(t, got, 3)
	require.Equal(t, 9, got[0])

	_, err = s.PollWant(t.Context(), id, "r", 8, schedapi.Want{Pieces: []int{3, 2}, Background: -1})
	require.ErrorIs(t, err, ErrInvalid)
}

// TestPollWantDemandsMissing: wanted pieces the task has not published are
// handed to the demand hook, and the parked poll gets the wanted piece as
// soon as it is published, even when others were published first.
func TestPollWantDemandsMissing(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var demanded [][]int
	s := startScheduler(t, Config{}, WithDemand(func(_ taskid.ID, p []int) {
		mu.Lock()
		demanded = append(demanded, slices.Clone(p))
		mu.Unlock()
	}))
	id := addTask(t, s, t.Name(), 30, 2)
	join(t, s, id, "r", 0, 1)

	ch := make(chan pollReply, 1)
	go func() {
		resp, err := s.PollWant(t.Context(), id, "r", 4, schedapi.Want{Pieces: []int{20, 21}, Background: 0})
		ch <- pollReply{resp: resp, err: err}
	}()
	waitParked(t, s, id, 1)
	mu.Lock()
	require.Equal(t, [][]int{{20, 21}}, demanded)
	mu.Unlock()

	// Another piece does not answer a wanted-only poll.
	require.NoError(t, s.PublishPiece(t.Context(), id, 2, pieceDigest(id, 2)))
	waitParked(t, s, id, 1)
	require.NoError(t, s.PublishPiece(t.Context(), id, 21, pieceDigest(id, 21)))
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, []int{21}, pieces(r.resp.Assignments))
}

// TestParkedWantersServedFirst: when one piece becomes servable for two
// parked polls, the one that wants it gets it before an older poll that
// does not.
func TestParkedWantersServedFirst(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{CDNUploadSlots: 1})
	id := addTask(t, s, t.Name(), 10, 0)
	join(t, s, id, "old")
	join(t, s, id, "wanter")

	oldCh := pollAsync(t.Context(), s, id, "old", 1)
	waitParked(t, s, id, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	wantCh := make(chan pollReply, 1)
	go func() {
		resp, err := s.PollWant(ctx, id, "wanter", 1, schedapi.Want{Pieces: []int{4}, Background: -1})
		wantCh <- pollReply{resp: resp, err: err}
	}()
	waitParked(t, s, id, 2)
	// One CDN slot, one piece: it goes to the poll that wants it.
	require.NoError(t, s.PublishPiece(t.Context(), id, 4, pieceDigest(id, 4)))
	r := receive(t, wantCh)
	require.NoError(t, r.err)
	require.Equal(t, []int{4}, pieces(r.resp.Assignments))
	select {
	case r := <-oldCh:
		t.Fatalf("the older poll without wants got %v first", pieces(r.resp.Assignments))
	default:
	}
}

// TestSetWantUpdatesParkedPoll: a parked poll whose wants are updated is
// answered with the newly wanted piece, its max raised, and the missing
// wanted pieces go to the demand hook.
func TestSetWantUpdatesParkedPoll(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var demanded [][]int
	s := startScheduler(t, Config{}, WithDemand(func(_ taskid.ID, p []int) {
		mu.Lock()
		demanded = append(demanded, slices.Clone(p))
		mu.Unlock()
	}))
	id := addTask(t, s, t.Name(), 30, 0)
	join(t, s, id, "r")
	// Published but wanted only: the poll parks.
	require.NoError(t, s.PublishPiece(t.Context(), id, 3, pieceDigest(id, 3)))
	require.NoError(t, s.PublishPiece(t.Context(), id, 8, pieceDigest(id, 8)))
	ch := make(chan pollReply, 1)
	go func() {
		resp, err := s.PollWant(t.Context(), id, "r", 1, schedapi.Want{Pieces: []int{20}, Background: 0})
		ch <- pollReply{resp: resp, err: err}
	}()
	waitParked(t, s, id, 1)
	require.NoError(t, s.SetWant(t.Context(), id, "r", 3, schedapi.Want{Pieces: []int{3, 8, 25}, Background: 0}))
	r := receive(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, []int{3, 8}, pieces(r.resp.Assignments), "the new wants, up to the new max")
	mu.Lock()
	require.Equal(t, [][]int{{20}, {25}}, demanded)
	mu.Unlock()

	// No parked poll: nothing to change, no error. Unknown peer: an error.
	require.NoError(t, s.SetWant(t.Context(), id, "r", 3, schedapi.Want{Pieces: []int{5}, Background: 0}))
	require.ErrorIs(t, s.SetWant(t.Context(), id, "nobody", 3, schedapi.NoWant), ErrPeerNotFound)
	require.ErrorIs(t, s.SetWant(t.Context(), id, "r", 3, schedapi.Want{Pieces: []int{2, 1}}), ErrInvalid)
}
