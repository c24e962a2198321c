package scheduler

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// countingPolicy counts the policy runs of the policy it wraps.
type countingPolicy struct {
	selectionPolicy
	runs int
}

func (p *countingPolicy) choose(t *task, req *member, max int, s slots) []choice {
	p.runs++
	return p.selectionPolicy.choose(t, req, max, s)
}

// TestFlushRetriesOnlyWhoMayGain parks many polls and checks that one
// published piece or one new holder costs policy runs only for the polls
// that can get it, while every poll is still answered in turn.
func TestFlushRetriesOnlyWhoMayGain(t *testing.T) {
	t.Parallel()
	const waiting = 40
	st := newTestState(t, Config{PeerUploadSlots: 4, CDNPieceFanout: 1})
	pol := &countingPolicy{selectionPolicy: st.policy}
	st.policy = pol
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 10, Size: 20}))
	ws := make([]*waiter, waiting)
	for i := range ws {
		name := peerName(i)
		_, err := st.join(id, peerAt(name, 1000+i), nil)
		require.NoError(t, err)
		ws[i] = newWaiter(id, name, 4)
		st.poll(ws[i])
		st.flush() // as the event loop does after every event
		require.True(t, ws[i].parked)
	}
	answered := func() []*waiter {
		var out []*waiter
		for _, w := range ws {
			select {
			case r := <-w.reply:
				require.NoError(t, r.err)
				require.Len(t, r.resp.Assignments, 1)
				w.reply <- r // keep it for later reads
				out = append(out, w)
			default:
			}
		}
		return out
	}

	// One piece published: the CDN serves it to the oldest poll only, and
	// the others are not run through the policy.
	pol.runs = 0
	require.NoError(t, st.publish(id, 0, pieceDigest(id, 0)))
	st.flush()
	got := answered()
	require.Equal(t, []*waiter{ws[0]}, got)
	require.Equal(t, 1, pol.runs)

	// Its taker reports it: the next four polls fetch it from the new
	// holder (four slots), no more policy runs than that.
	pol.runs = 0
	r := <-ws[0].reply
	require.NoError(t, st.report(id, ws[0].peerID, []schedapi.PieceResult{{Piece: 0, From: cdnPeer.ID, OK: true}}))
	st.flush()
	got = answered()
	require.Equal(t, ws[1:5], got)
	for _, w := range got {
		rr := <-w.reply
		require.Equal(t, ws[0].peerID, rr.resp.Assignments[0].From.ID)
	}
	require.Equal(t, 4, pol.runs)
	require.Equal(t, schedapi.TaskRunning, r.resp.State)

	// The sweep retries everyone, a safety net: nothing to get, all stay.
	pol.runs = 0
	st.sweep()
	st.flush()
	require.Equal(t, waiting-5, pol.runs)
	require.Empty(t, answered())
	require.Len(t, st.tasks[id].waiters, waiting-5)
}

func peerName(i int) string { return "peer-" + string(rune('a'+i/26)) + string(rune('a'+i%26)) }

// TestCanServeMatchesChoose checks, over random task states, that the
// policy's canServe (which decides which parked polls are retried) agrees
// with choose: choose finds something exactly when canServe holds for some
// piece.
func TestCanServeMatchesChoose(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		pieces := 1 + rng.IntN(12)
		fix := fixture{pieces: pieces, holders: map[string][]int{}, uploading: map[string]int{}}
		fix.published = nil
		for i := range pieces {
			if rng.IntN(4) > 0 {
				fix.published = append(fix.published, i)
			}
		}
		if len(fix.published) == 0 {
			fix.published = []int{}
		}
		names := []string{"a", "b", "c", "d", "r"}
		for _, n := range names {
			var have []int
			for _, i := range fix.published {
				if rng.IntN(3) == 0 {
					have = append(have, i)
				}
			}
			fix.holders[n] = have
			fix.uploading[n] = rng.IntN(3)
		}
		fix.uploading["cdn"] = rng.IntN(3)
		if rng.IntN(3) == 0 {
			fix.struck = []string{names[rng.IntN(4)]}
		}
		for range rng.IntN(3) {
			if len(fix.published) == 0 {
				break
			}
			p := fix.published[rng.IntN(len(fix.published))]
			if !contains(fix.holders["r"], p) && !hasFlight(fix.inflight, "r", p) {
				fix.inflight = append(fix.inflight, flight{to: "r", piece: p})
			}
		}
		st, tk := fix.build(t, Config{PeerUploadSlots: 2, CDNUploadSlots: 2})
		req := tk.members["r"]
		s := st.slots()
		any := false
		for i := range pieces {
			any = any || st.policy.canServe(tk, req, i, s)
		}
		got := st.policy.choose(tk, req, 8, s)
		require.Equal(t, any, len(got) > 0, "round %d: %+v", round, fix)
		for _, c := range got {
			require.True(t, st.policy.canServe(tk, req, c.piece, s), "round %d: chose piece %d", round, c.piece)
		}
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func hasFlight(fs []flight, to string, p int) bool {
	for _, f := range fs {
		if f.to == to && f.piece == p {
			return true
		}
	}
	return false
}
