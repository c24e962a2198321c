package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// checkIndex recounts every index of st from scratch and compares: the free
// holders of each piece, the servable pieces, the members with a free slot,
// each member's held and busy pieces and parked polls, each peer's uploads.
// It also checks what the flush relies on: no parked poll could be answered.
func checkIndex(t *testing.T, st *state, step int) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d: "+format, append([]any{step}, args...)...)
	}
	uploads := map[*peer]int{}
	for _, tk := range st.tasks {
		fanout, unrated, fastest := st.cfg.CDNPieceFanout, 0, int64(0)
		for _, m := range tk.members {
			if m.rate == 0 {
				unrated++
			}
			fastest = max(fastest, m.rate)
		}
		switch {
		case fanout == 1:
		case st.cfg.CDNUploadRate > 0 && len(tk.members) > 0 && unrated == 0:
			fanout = int(max(1, min(st.cfg.CDNUploadRate/fastest, int64(fanout))))
		case len(tk.members) > st.cfg.CDNUploadSlots:
			fanout = 1
		}
		if tk.fanout != fanout {
			fail("task %s: fanout %d, recount %d (%d members, %d unrated, fastest %d)", tk.id, tk.fanout, fanout, len(tk.members), unrated, fastest)
		}
		if tk.ch != nil {
			fail("change record left after flush: %+v", tk.ch)
		}
		for i := range tk.digests {
			free := 0
			for _, h := range tk.holders[i] {
				if tk.isStruck(h.peer.id) || !h.have.Has(i) {
					fail("holder %s of piece %d is struck or does not hold it", h.peer.id, i)
				}
				if h.peer.uploading < st.cfg.PeerUploadSlots {
					free++
				}
			}
			fromCDN := 0
			for _, m := range tk.members {
				if a := m.inflight[i]; a != nil && a.from == nil && !a.lapsed {
					fromCDN++
				}
			}
			if fromCDN != tk.fromCDN[i] {
				fail("piece %d: %d CDN transfers in flight, counted %d, fanout %d", i, fromCDN, tk.fromCDN[i], st.cfg.CDNPieceFanout)
			}
			pub := tk.digests[i] != ""
			arr := !pub && i == tk.arriving && len(tk.holders[i]) == 0
			if free != tk.free[i] || pub != tk.pub.has(i) || (pub && free > 0) != tk.peerOK.has(i) ||
				((pub || arr) && free == 0 && cdnRecount(tk, fromCDN, i, fanout) && len(tk.holders[i]) == 0) != tk.cdnOK.has(i) ||
				(pub && free == 0 && cdnRecount(tk, fromCDN, i, fanout) && len(tk.holders[i]) > 0) != tk.cdnDup.has(i) {
				fail("piece %d: free %d (recount %d), published %v, peerOK %v, cdnOK %v, cdnDup %v",
					i, tk.free[i], free, pub, tk.peerOK.has(i), tk.cdnOK.has(i), tk.cdnDup.has(i))
			}
		}
		for _, m := range tk.members {
			wantFree := !tk.isStruck(m.peer.id) && m.peer.uploading < st.cfg.PeerUploadSlots
			if wantFree != (m.freeAt >= 0) || (m.freeAt >= 0 && (m.freeLoad != m.peer.uploading || tk.freeByLoad[m.freeLoad][m.freeAt] != m)) {
				fail("%s: in free members %v, should be %v", m.peer.id, m.freeAt >= 0, wantFree)
			}
			for i := range len(tk.digests) + 1 {
				if m.have.Has(i) != m.held.has(i) || (m.have.Has(i) || m.inflight[i] != nil) != m.busy.has(i) {
					fail("%s piece %d: held %v busy %v", m.peer.id, i, m.held.has(i), m.busy.has(i))
				}
				if m.have.Has(i) && !tk.isStruck(m.peer.id) && !slices.Contains(tk.holders[i], m) {
					fail("%s not listed as a holder of %d", m.peer.id, i)
				}
			}
			waiting := 0
			for _, w := range tk.waiters {
				if w.m == m {
					waiting++
				}
			}
			if waiting != m.waiting || m.touched {
				fail("%s: %d parked polls counted, %d parked, touched %v", m.peer.id, m.waiting, waiting, m.touched)
			}
			for a := range m.serving {
				uploads[m.peer]++
				if a.to.inflight[a.piece] != a {
					fail("%s serves an assignment that is not in flight", m.peer.id)
				}
			}
		}
		nfree := 0
		for _, ms := range tk.freeByLoad {
			for _, m := range ms {
				nfree++
				if tk.members[m.peer.id] != m {
					fail("free member %s left the task", m.peer.id)
				}
			}
		}
		if nfree != tk.nfree {
			fail("%d free members counted, %d listed", tk.nfree, nfree)
		}
		// Both ways of finding the least loaded source agree on its load.
		for _, req := range tk.members {
			var taken takenSlots
			for _, m := range tk.members {
				if id := m.peer.id; id[len(id)-1]%2 == 0 {
					taken.add(m.peer) // as if chosen earlier in the same call
				}
			}
			for i := range tk.digests {
				a := leastLoadedHolder(tk, i, req, &taken, st.cfg.PeerUploadSlots)
				b := leastLoadedFree(tk, i, req, &taken, st.cfg.PeerUploadSlots)
				if (a == nil) != (b == nil) || (a != nil && a.peer.uploading+taken.of(a.peer) != b.peer.uploading+taken.of(b.peer)) {
					fail("least loaded source of %d for %s: %v by holders, %v by free members", i, req.peer.id, a, b)
				}
			}
		}
		for _, w := range tk.waiters {
			if !w.parked || tk.state != w.state || tk.complete(w.m) {
				fail("%s parked across a state change or complete", w.peerID)
			}
			if tk.strikes[w.peerID].barred || len(w.m.inflight) >= st.cfg.MaxOutstanding || len(w.m.avoid) > 0 {
				// Barred and capped members get nothing whatever the
				// policy says; one that avoids a source may wait for a
				// sweep (the index does not track whom each avoids).
				continue
			}
			for i := range tk.digests {
				if st.policy.canServe(tk, w.m, i, st.slots()) {
					fail("parked %s could get piece %d", w.peerID, i)
				}
			}
			if got := st.policy.choose(tk, w.m, w.max, st.slots()); len(got) > 0 {
				fail("parked %s could be served %+v", w.peerID, got)
			}
		}
	}
	for _, p := range st.peers {
		if uploads[p] != p.uploading {
			fail("%s: %d uploads counted, %d served", p.id, p.uploading, uploads[p])
		}
	}
	// CDN slots: taken by the CDN assignments in flight, neither lapsed
	// nor made while their piece was arriving.
	cdnBusy := 0
	for _, tk := range st.tasks {
		for _, m := range tk.members {
			for _, a := range m.inflight {
				if a.from == nil && !a.lapsed && !a.arriving {
					cdnBusy++
				}
			}
		}
	}
	if cdnBusy != st.cdnBusy {
		fail("%d CDN slots taken, %d recounted", st.cdnBusy, cdnBusy)
	}
}

// cdnRecount reports, from the task's holders and the CDN's transfers of
// piece i in flight, whether the CDN may start one more transfer of it when
// no holder has a free slot.
func cdnRecount(tk *task, fromCDN, i, fanout int) bool {
	if fanout == 1 {
		return fromCDN == 0 && len(tk.holders[i]) == 0
	}
	return fromCDN < fanout
}

// TestIndexMatchesRecount drives a state through random events (joins,
// leaves, polls, results of every kind, cancelled polls, publications, task
// failures, timeouts) over two tasks sharing peers, flushing after each as
// the event loop does, and checks every index against a recount each time.
func TestIndexMatchesRecount(t *testing.T) {
	t.Parallel()
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			randomIndexRun(t, seed, 600)
		})
	}
}

func randomIndexRun(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 99))
	// arr decides when a piece arrives before it is published (its own
	// stream, so that the other events draw what they drew before).
	arr := rand.New(rand.NewPCG(seed, 7))
	// Every third run super-seeds (fanout 1); the others let the CDN send a
	// piece to 2 or 3 requesters at once.
	cfg := Config{PeerUploadSlots: 2, CDNUploadSlots: 3, CDNPieceFanout: 1 + int(seed%3), StrikeLimit: 2, MaxOutstanding: 3}.ApplyDefaults()
	// In half the runs the CDN's upload rate is known and peers report
	// download rates (now and then none), so the fanout follows the
	// fastest member: 100/200 -> 1, 100/50 -> 2, 100/30 -> 3.
	rates := []int64{0}
	if seed%4 >= 2 {
		cfg.CDNUploadRate = 100
		rates = []int64{0, 30, 30, 50, 50, 200}
	}
	pol, err := newPolicy(cfg.Policy)
	require.NoError(t, err)
	m, err := newMetrics(nil)
	require.NoError(t, err)
	clock := newFakeClock()
	st := newState(cfg, cdnPeer, pol, clock.Now, zap.NewNop(), m)
	// In half the runs the CDN reports the transfers it starts, and CDN
	// assignments lapse and are revoked.
	st.startReports = seed%2 == 1

	const pieces = 10
	ids := []taskid.ID{testTaskID(t.Name() + "/a"), testTaskID(t.Name() + "/b")}
	next := map[taskid.ID]int{} // next piece to publish
	add := func(id taskid.ID) {
		size := int64(pieces * 10)
		if rng.IntN(3) == 0 {
			size = -1
		}
		require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 10, Size: size}))
		next[id] = 0
	}
	for _, id := range ids {
		add(id)
	}
	peers := []string{"p0", "p1", "p2", "p3", "p4", "p5"}
	type flight struct {
		task       taskid.ID
		peer, from string
		piece      int
	}
	var flights []flight
	var polls, answered []*waiter
	step, restarts := 0, 0
	collect := func() {
		kept := polls[:0]
		for _, w := range polls {
			if !w.answered {
				kept = append(kept, w)
				continue
			}
			r := <-w.reply
			for _, a := range r.resp.Assignments {
				if a.Digest == "" && !(a.Arriving && a.FromCDN) {
					t.Fatalf("step %d: piece %d assigned without a digest from %s, not arriving from the CDN", step, a.Piece, a.From.ID)
				}
				flights = append(flights, flight{task: w.taskID, peer: w.peerID, from: a.From.ID, piece: a.Piece})
			}
			answered = append(answered, w)
		}
		polls = kept
	}
	reasons := []schedapi.FailureReason{schedapi.ReasonTransfer, schedapi.ReasonMissing, schedapi.ReasonCorrupt, schedapi.ReasonAborted}
	for ; step < steps; step++ {
		id := ids[rng.IntN(len(ids))]
		p := peers[rng.IntN(len(peers))]
		switch op := rng.IntN(20); {
		case op < 3:
			have := &piece.Set{}
			for i := range pieces {
				if rng.IntN(4) == 0 {
					have.Add(i)
				}
			}
			sp := peerAt(p, 20000+rng.IntN(9))
			sp.DownloadRate = rates[rng.IntN(len(rates))]
			_, _ = st.join(id, sp, have)
		case op < 4:
			_ = st.leave(id, p)
		case op < 9:
			w := newWaiter(id, p, 1+rng.IntN(4))
			st.poll(w)
			polls = append(polls, w)
		case op < 14 && len(flights) > 0 && st.startReports && rng.IntN(3) == 0:
			f := flights[rng.IntN(len(flights))]
			if tk := st.tasks[f.task]; tk != nil && tk.members[f.peer] != nil {
				if a := tk.members[f.peer].inflight[f.piece]; a != nil && a.lapsed {
					// Late, it takes its CDN slot back even past the
					// piece's fanout.
					restarts++
				}
			}
			st.started(f.task, f.peer, int64(f.piece)*10, 10)
		case op < 14 && len(flights) > 0:
			k := rng.IntN(len(flights))
			f := flights[k]
			flights = append(flights[:k], flights[k+1:]...)
			r := schedapi.PieceResult{Piece: f.piece, From: f.from, OK: rng.IntN(3) > 0, Bytes: 10}
			if !r.OK {
				r.Reason = reasons[rng.IntN(len(reasons))]
				if r.Reason == schedapi.ReasonCorrupt && rng.IntN(3) > 0 {
					r.Reason = schedapi.ReasonTransfer
				}
			}
			_ = st.report(f.task, f.peer, []schedapi.PieceResult{r})
		case op < 15 && len(polls) > 0:
			st.unpark(polls[rng.IntN(len(polls))])
		case op < 15 && len(answered) > 0:
			st.release(answered[rng.IntN(len(answered))]) // the caller hung up
		case op < 18:
			tk := st.tasks[id]
			switch {
			case tk == nil || tk.state == schedapi.TaskFailed: // failed, or failed and forgotten
				add(id)
			case next[id] < pieces && tk.count >= 0 && tk.arriving != next[id] && arr.IntN(2) == 0:
				// The CDN starts reading it: only the CDN may serve it.
				require.NoError(t, st.arrive(id, next[id]))
			case next[id] < pieces:
				require.NoError(t, st.publish(id, next[id], pieceDigest(id, next[id])))
				next[id]++
			case tk.state == schedapi.TaskRunning:
				require.NoError(t, st.succeed(id, pieces*10, ""))
			}
		case op < 19:
			if tk := st.tasks[id]; tk != nil && tk.state == schedapi.TaskRunning && rng.IntN(10) == 0 {
				require.NoError(t, st.fail(id, fmt.Errorf("origin gone")))
			}
		default:
			if rng.IntN(2) == 0 {
				clock.Advance(time.Duration(rng.IntN(400)) * time.Millisecond)
				st.lapseDue()
				break
			}
			clock.Advance(time.Duration(rng.IntN(40)) * time.Second)
			st.sweep()
		}
		st.flush()
		collect()
		checkIndex(t, st, step)
		for _, tk := range st.tasks {
			for i, n := range tk.fromCDN {
				if n > st.cfg.CDNPieceFanout+restarts {
					t.Fatalf("step %d: piece %d: %d CDN transfers in flight, fanout %d, %d lapsed restarts", step, i, n, st.cfg.CDNPieceFanout, restarts)
				}
			}
		}
	}
}
