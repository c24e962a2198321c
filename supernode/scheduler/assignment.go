package scheduler

// Assignment: which member fetches which piece from whom. Polls park as
// waiters and are answered when a change lets them be (flush, retry); the
// choice itself is the selection policy (policy.go). Every function runs on
// the event loop.

import (
	"fmt"
	"slices"
	"time"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// startAssignment records that to fetches piece i from from (nil: the CDN).
//
// Its deadline is the time a transfer of the piece at MinPieceRate takes
// (Config.transferTimeout). A CDN assignment, when the CDN reports starts,
// must also start within CDNStartGrace; its deadline then counts from the
// start.
func (st *state) startAssignment(t *task, to *member, i int, from *member) *assignment {
	_, n := piece.Bounds(i, t.size, t.pieceSize)
	now := st.now()
	a := &assignment{task: t, piece: i, to: to, from: from, length: n, started: true, arriving: from == nil && !t.isPublished(i)}
	a.deadline = now.Add(st.transferTimeout(a))
	if from == nil && st.startReports {
		a.started, a.at = false, now
		a.startBy = now.Add(st.cfg.CDNStartGrace)
		st.fresh = append(st.fresh, a)
	}
	to.inflight[i] = a
	to.busy.set(i)
	t.inflight[i]++
	if from == nil {
		to.fromCDN++
		st.takeCDNOf(a, 1)
	} else {
		from.serving[a] = struct{}{}
		st.addUploads(from.peer, 1)
	}
	st.assignments++
	st.m.assigned(from == nil)
	return a
}

// transferTimeout is how long a's transfer may take: the piece's length at
// MinPieceRate (Config.transferTimeout), or, for an arriving piece, which
// comes at the origin's pace, AssignmentTimeout.
func (st *state) transferTimeout(a *assignment) time.Duration {
	if a.arriving {
		return st.cfg.AssignmentTimeout
	}
	return st.cfg.transferTimeout(a.length, a.to.rate)
}

// endAssignment frees the slot a held and lets its piece be assigned again.
// Unless the piece was delivered, the requester wants it again.
func (st *state) endAssignment(a *assignment, delivered bool) {
	if a.to.inflight[a.piece] != a {
		return
	}
	t := a.task
	delete(a.to.inflight, a.piece)
	a.to.syncBusy(a.piece)
	t.inflight[a.piece]--
	if a.from == nil {
		a.to.fromCDN--
		if a.lapsed {
			a.lapsed = false
			if a.to.lapsed--; a.to.lapsed == 0 {
				st.touch(a.to)
			}
		} else {
			st.takeCDNOf(a, -1)
		}
	} else {
		delete(a.from.serving, a)
		st.addUploads(a.from.peer, -1)
	}
	st.assignments--
	if !delivered || len(a.to.inflight) == st.cfg.MaxOutstanding-1 {
		// It wants the piece again, or may have more now.
		st.touch(a.to)
	}
}

// takeCDN takes (d 1) or gives back (d -1) a CDN slot and one of piece i's
// CDN transfers in t.
func (st *state) takeCDN(t *task, i, d int) {
	st.cdnBusy += d
	t.fromCDN[i] += d
	if d < 0 && (st.cdnBusy == st.cfg.CDNUploadSlots-1 || st.cdnBusy == dupLimit(st.cfg.CDNUploadSlots)-1) {
		st.changedCDN()
	}
	st.refresh(t, i)
}

// takeCDNOf takes (d 1) or gives back (d -1) what CDN assignment a holds:
// one of its piece's CDN transfers and, unless a was made while its piece
// was arriving, a CDN slot. An arriving piece is sent at the origin's pace,
// a share of the CDN's link, for as long as the origin takes: it is bounded
// by its fanout only, and leaves the slots to the pieces the CDN sends at
// the speed of its link.
func (st *state) takeCDNOf(a *assignment, d int) {
	if !a.arriving {
		st.takeCDN(a.task, a.piece, d)
		return
	}
	a.task.fromCDN[a.piece] += d
	st.refresh(a.task, a.piece)
}

// lapseDue lapses the CDN assignments not started within cdnLapse: each
// gives its slot and its piece's fanout back, and its requester gets no
// more CDN assignments until it starts or ends. A requester that hoards
// thus blocks the CDN for a moment only, and one at a time.
func (st *state) lapseDue() {
	cutoff := st.now().Add(-st.cfg.cdnLapse())
	k := 0
	for ; k < len(st.fresh); k++ {
		a := st.fresh[k]
		if a.started || a.lapsed || a.to.inflight[a.piece] != a {
			continue
		}
		if a.at.After(cutoff) {
			break
		}
		a.lapsed = true
		a.to.lapsed++
		st.takeCDNOf(a, -1)
	}
	clear(st.fresh[:k])
	st.fresh = st.fresh[k:]
}

// assign asks the policy for up to max pieces for m and records them.
//
// A member gets no more than MaxOutstanding assignments in flight, and none
// once barred from the task.
func (st *state) assign(t *task, m *member, max int) []schedapi.Assignment {
	max = min(max, st.cfg.MaxOutstanding-len(m.inflight))
	if t.state == schedapi.TaskFailed || max <= 0 || t.strikes[m.peer.id].barred {
		return nil
	}
	chosen := st.policy.choose(t, m, max, st.slots())
	if len(chosen) == 0 {
		return nil
	}
	out := make([]schedapi.Assignment, 0, len(chosen))
	for _, c := range chosen {
		st.startAssignment(t, m, c.piece, c.from)
		off, n := piece.Bounds(c.piece, t.size, t.pieceSize)
		a := schedapi.Assignment{
			Piece:  c.piece,
			Offset: off,
			Length: n,
			Digest: t.digests[c.piece].String(),
		}
		if c.from == nil {
			a.From, a.FromCDN = st.cdn, true
			// Not published yet: the CDN sends the digest at the end.
			a.Arriving = a.Digest == ""
		} else {
			a.From = schedapi.Peer{ID: c.from.peer.id, Addr: c.from.peer.addr}
		}
		out = append(out, a)
	}
	return out
}

// poll answers w now if it can, or parks it on its task.
func (st *state) poll(w *waiter) {
	t, m, err := st.member(w.taskID, w.peerID)
	if err != nil {
		w.answer(schedapi.PiecesResponse{}, fmt.Errorf("poll: %w", err))
		return
	}
	m.peer.lastSeen = st.now()
	w.t, w.m, w.state = t, m, t.state
	if w.wanting() {
		st.demandMissing(t, w.wantList)
	}
	if !st.tryAnswer(w) {
		w.parked = true
		m.peer.polling++
		m.waiting++
		t.waiters = st.park(t.waiters, w)
	}
}

// setWant changes what the member's parked polls ask for and has them
// retried.
func (st *state) setWant(taskID taskid.ID, peerID string, max int, want schedapi.Want) error {
	t, m, err := st.member(taskID, peerID)
	if err != nil {
		return fmt.Errorf("want: %w", err)
	}
	m.peer.lastSeen = st.now()
	if m.waiting == 0 {
		return nil
	}
	kept := t.waiters[:0]
	var moved []*waiter
	for _, w := range t.waiters {
		if w.m != m {
			kept = append(kept, w)
			continue
		}
		w.want, w.wantList = nil, nil
		w.setWant(want)
		if max > 0 {
			w.max = max
		}
		moved = append(moved, w)
	}
	t.waiters = kept
	for _, w := range moved {
		t.waiters = st.park(t.waiters, w)
	}
	if len(want.Pieces) > 0 {
		st.demandMissing(t, want.Pieces)
	}
	st.touch(m)
	return nil
}

// park adds w to the parked polls: a poll with wants goes after the other
// polls with wants and before those without, so that on-demand reads are
// served before the background fill; otherwise polls are retried oldest
// first.
func (st *state) park(ws []*waiter, w *waiter) []*waiter {
	if !w.wanting() {
		return append(ws, w)
	}
	k := len(ws)
	for k > 0 && !ws[k-1].wanting() {
		k--
	}
	return slices.Insert(ws, k, w)
}

// demandMissing hands the demand hook the wanted pieces of a running task
// that are not published yet.
func (st *state) demandMissing(t *task, want []int) {
	if st.demand == nil || t.state != schedapi.TaskRunning || t.count < 0 {
		return
	}
	var missing []int
	for _, i := range want {
		if i < t.count && !t.isPublished(i) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		st.m.demanded.Add(float64(len(missing)))
		st.demand(t.id, missing)
	}
}

// tryAnswer answers w if it has assignments, if its task changed state since
// it arrived or failed, or if its peer holds all of a succeeded task.
func (st *state) tryAnswer(w *waiter) bool {
	t, m := w.t, w.m
	m.want, m.bg = w.want, w.bg
	complete := t.complete(m)
	done := t.state != w.state || t.state == schedapi.TaskFailed || complete
	resp := schedapi.PiecesResponse{}
	if t.state != schedapi.TaskFailed && !complete {
		resp.Assignments = st.assign(t, m, w.max)
		for _, a := range resp.Assignments {
			w.given = append(w.given, m.inflight[a.Piece])
		}
	}
	if len(resp.Assignments) == 0 && !done {
		return false
	}
	resp.TaskInfo = t.info()
	w.answer(resp, nil)
	return true
}

// unpark answers w, if it is still parked, with no assignments: its caller
// stopped waiting.
func (st *state) unpark(w *waiter) {
	if !w.parked {
		return
	}
	t := w.t
	if i := slices.Index(t.waiters, w); i >= 0 {
		t.waiters = slices.Delete(t.waiters, i, i+1)
	}
	w.answer(schedapi.PiecesResponse{TaskInfo: t.info()}, nil)
}

// release ends the assignments w was answered with: nobody will fetch them.
func (st *state) release(w *waiter) {
	for _, a := range w.given {
		st.endAssignment(a, false)
	}
	w.given = nil
}

// flush retries the parked polls of every task something changed in, oldest
// first. After a state change or a sweep every parked poll is run through
// the policy. Otherwise only the polls that may gain are: those wanting a
// piece that became servable (and only until no such piece is left
// servable), and those of members that want a piece again or completed. A
// parked poll never wants a piece that is servable (it would have been
// answered), so nothing else can serve it, and one published piece or one
// freed slot does not cost a walk over every parked peer.
func (st *state) flush() {
	// A retry only takes slots and pieces, so it records no new change;
	// the index loop is safe all the same.
	for k := 0; k < len(st.dirty); k++ {
		t := st.dirty[k]
		c := t.ch
		t.ch = nil
		if c == nil {
			continue
		}
		switch {
		case len(t.waiters) == 0:
		case c.all:
			kept := t.waiters[:0]
			for _, w := range t.waiters {
				if !st.tryAnswer(w) {
					kept = append(kept, w)
				}
			}
			clear(t.waiters[len(kept):])
			t.waiters = kept
		default:
			st.retry(t, c)
		}
		for _, m := range c.members {
			m.touched = false
		}
		clear(c.pieces)
		clear(c.members)
		*c = changes{pieces: c.pieces, members: c.members[:0]}
		t.spare = c
	}
	clear(st.dirty)
	st.dirty = st.dirty[:0]
}

// retry retries the parked polls of t that what c records may serve.
func (st *state) retry(t *task, c *changes) {
	room := st.slots().room()
	// want: the pieces that became servable and still are.
	want := st.want[:0]
	n := len(c.pieces)
	if c.cdn && room.free {
		n = max(n, len(t.cdnOK), len(t.cdnDup))
	}
	rose := false
	for w := range n {
		x := c.pieces.word(w)
		if c.cdn {
			x |= t.cdnOK.word(w) | t.cdnDup.word(w)
		}
		x &= t.servableWord(w, room)
		rose = rose || x != 0
		want = append(want, x)
	}
	st.want = want
	touched := len(c.members) > 0
	if !rose && !touched {
		return
	}
	kept := t.waiters[:0]
	for k, w := range t.waiters {
		if !rose && !touched {
			kept = append(kept, t.waiters[k:]...)
			break
		}
		if !(w.m.touched || rose && w.m.wants(want)) || !st.tryAnswer(w) {
			kept = append(kept, w)
			continue
		}
		if rose {
			// The answer took slots: keep what is still servable.
			room = st.slots().room()
			rose = false
			for i := range want {
				want[i] &= t.servableWord(i, room)
				rose = rose || want[i] != 0
			}
		}
	}
	clear(t.waiters[len(kept):])
	t.waiters = kept
}

// slots returns the upload capacity as it stands.
func (st *state) slots() slots {
	return slots{peer: st.cfg.PeerUploadSlots, cdn: st.cfg.CDNUploadSlots, cdnBusy: st.cdnBusy}
}

// started records that the CDN began sending bytes [off, off+n) of a task
// to peerID: its CDN assignments of the pieces in that range are started,
// and their deadline counts from now.
func (st *state) started(taskID taskid.ID, peerID string, off, n int64) {
	t := st.tasks[taskID]
	if t == nil || off < 0 || n <= 0 {
		return
	}
	m := t.members[peerID]
	if m == nil {
		return
	}
	now := st.now()
	m.peer.lastSeen = now
	first, last := off/t.pieceSize, (off+n-1)/t.pieceSize
	for i := first; i <= last && i < first+schedapi.MaxAssignments; i++ {
		a := m.inflight[int(i)]
		if a == nil || a.from != nil || a.started {
			continue
		}
		a.started = true
		a.deadline = now.Add(st.transferTimeout(a))
		if !m.proven {
			m.proven = true
			st.touch(m)
		}
		if a.lapsed {
			// Late, but under way: it holds a slot again.
			a.lapsed = false
			if m.lapsed--; m.lapsed == 0 {
				st.touch(m)
			}
			st.takeCDNOf(a, 1)
		}
	}
}
