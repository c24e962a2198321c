package scheduler

// Results: members report each piece they fetched or failed to fetch;
// failures count against their source (strikes, accusations, bars). Every
// function runs on the event loop.

import (
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func (st *state) report(taskID taskid.ID, peerID string, results []schedapi.PieceResult) error {
	t, m, err := st.member(taskID, peerID)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	for _, r := range results {
		if r.Piece < 0 || r.Piece >= maxPieces || (t.count >= 0 && r.Piece >= t.count) {
			return fmt.Errorf("report piece %d of task %s: out of range (%d pieces): %w", r.Piece, taskID, t.count, ErrInvalid)
		}
		if r.From == "" {
			return fmt.Errorf("report piece %d of task %s: no source named: %w", r.Piece, taskID, ErrInvalid)
		}
	}
	m.peer.lastSeen = st.now()
	for _, r := range results {
		st.applyResult(t, m, r)
	}
	return nil
}

// applyResult records one piece result of requester m. Only a failure of a
// source the scheduler assigned counts against it, so that no peer can strike
// another it was not sent to. A corrupt report is evidence, not a verdict
// (accuse). The results of a barred requester are ignored.
func (st *state) applyResult(t *task, m *member, r schedapi.PieceResult) {
	rec := t.strikes[m.peer.id]
	if rec.barred {
		return
	}
	a := m.inflight[r.Piece]
	var src *member
	if a != nil {
		if a.from != nil && a.from.peer.id == r.From {
			src = a.from
		}
		if a.from == nil && r.From == st.cdn.ID && !r.OK && st.cdnCorrupt != nil && classifyFailure(r.Reason) == failIntegrity {
			// Never a strike against the CDN: its copy is checked.
			st.cdnCorrupt(t.id, r.Piece)
		}
		st.endAssignment(a, r.OK && t.isPublished(r.Piece))
		rec.used++
		t.strikes[m.peer.id] = rec
	}
	st.m.result(r.OK)
	if r.OK {
		if a != nil && !m.proven {
			m.proven = true
			st.touch(m)
		}
		if t.isPublished(r.Piece) {
			st.addHeld(m, r.Piece)
		}
		if src != nil {
			src.servedOK.set(r.Piece)
			st.contradict(t, src, r.Piece, m)
		}
		if r.Bytes > 0 {
			t.countDelivery(r.From, m.peer.id)
			if r.From == st.cdn.ID {
				t.bytesFromCDN += r.Bytes
			} else {
				t.bytesFromPeers += r.Bytes
			}
		}
		return
	}
	if src == nil {
		return
	}
	kind := classifyFailure(r.Reason)
	switch kind {
	case failRequester:
		return
	case failMissing:
		st.dropHeld(src, r.Piece)
	case failIntegrity:
		st.accuse(t, m, src, r)
		return
	}
	st.strikeSource(t, src, kind, r.Piece, r.Error)
}

// strikeSource counts one failure of kind against src, striking it out as
// a source of t when that was one too many.
func (st *state) strikeSource(t *task, src *member, kind failureKind, i int, why string) {
	rec, out := strike(t.strikes[src.peer.id], kind, st.cfg.StrikeLimit)
	t.strikes[src.peer.id] = rec
	st.m.strike(kind)
	if !out {
		return
	}
	st.unlistSource(t, src)
	st.log.Warn("peer struck out as a source",
		zap.Stringer("task", t.id), zap.String("peer", src.peer.id), zap.Int("piece", i),
		zap.String("reason", why), zap.Int("failures", rec.failures))
}

// unlistSource stops counting src, now struck out, as a holder of anything
// in t.
func (st *state) unlistSource(t *task, src *member) {
	for _, i := range src.have.Indices() {
		st.unlistHolder(t, i, src)
	}
	t.dropFree(src)
	st.m.struckOut()
}

// accuse records requester m's report that src served piece r.Piece
// corrupt. m is not sent to src again at once. src is struck out only when
// the report is corroborated: a second requester, not barred, reports src
// corrupt in the task. A report that src served the same piece verified to
// someone else (before or after) contradicts it instead; a requester
// contradicted StrikeLimit times is barred from the task.
func (st *state) accuse(t *task, m, src *member, r schedapi.PieceResult) {
	if !m.avoids(src.peer) {
		m.avoid = append(m.avoid, src.peer)
		st.touch(m)
	}
	if src.servedOK.has(r.Piece) {
		st.log.Info("corrupt report contradicted", zap.Stringer("task", t.id), zap.String("reporter", m.peer.id),
			zap.String("peer", src.peer.id), zap.Int("piece", r.Piece))
		st.contradicted(t, m.peer.id)
		return
	}
	by := t.accused[src.peer.id]
	if by == nil {
		by = make(map[string][]int)
		t.accused[src.peer.id] = by
	}
	if !slices.Contains(by[m.peer.id], r.Piece) {
		by[m.peer.id] = append(by[m.peer.id], r.Piece)
	}
	accusers := 0
	for id := range by {
		if !t.strikes[id].barred {
			accusers++
		}
	}
	st.log.Info("corrupt report", zap.Stringer("task", t.id), zap.String("reporter", m.peer.id),
		zap.String("peer", src.peer.id), zap.Int("piece", r.Piece), zap.Int("accusers", accusers))
	if accusers >= 2 {
		delete(t.accused, src.peer.id)
		st.strikeSource(t, src, failIntegrity, r.Piece, r.Error)
	}
}

// contradict settles the corrupt reports against src for piece i: ok, a
// requester other than their authors, verified it from src.
func (st *state) contradict(t *task, src *member, i int, ok *member) {
	by := t.accused[src.peer.id]
	for id, pieces := range by {
		if id == ok.peer.id {
			continue
		}
		if j := slices.Index(pieces, i); j >= 0 {
			pieces = slices.Delete(pieces, j, j+1)
			if len(pieces) == 0 {
				delete(by, id)
			} else {
				by[id] = pieces
			}
			st.log.Info("corrupt report contradicted", zap.Stringer("task", t.id), zap.String("reporter", id),
				zap.String("peer", src.peer.id), zap.Int("piece", i))
			st.contradicted(t, id)
		}
	}
	if len(by) == 0 {
		delete(t.accused, src.peer.id)
	}
}

// contradicted counts one contradicted corrupt report of requester id.
func (st *state) contradicted(t *task, id string) {
	rec := t.strikes[id]
	rec.contradicted++
	t.strikes[id] = rec
	if rec.contradicted >= st.cfg.StrikeLimit {
		st.bar(t, id, "corrupt reports contradicted")
	}
}

// unused records that an assignment of requester m expired or was revoked
// without a report. A requester with StrikeLimit unused assignments, more
// than it reported, is barred from the task: it hoards.
func (st *state) unused(t *task, m *member) {
	rec := t.strikes[m.peer.id]
	rec.unused++
	t.strikes[m.peer.id] = rec
	if rec.unused >= st.cfg.StrikeLimit && rec.unused > rec.used {
		st.bar(t, m.peer.id, "assignments left unused")
	}
}

// bar excludes requester id from t: it gets no more assignments there, its
// assignments end, its reports are ignored, and it is no longer a source.
func (st *state) bar(t *task, id, why string) {
	rec := t.strikes[id]
	if rec.barred {
		return
	}
	wasStruck := rec.struck
	rec.barred, rec.struck = true, true
	t.strikes[id] = rec
	st.log.Warn("peer barred from task", zap.Stringer("task", t.id), zap.String("peer", id), zap.String("reason", why),
		zap.Int("unused", rec.unused), zap.Int("used", rec.used), zap.Int("contradicted", rec.contradicted))
	m := t.members[id]
	if m == nil {
		return
	}
	for _, a := range m.inflight {
		st.endAssignment(a, false)
	}
	if !wasStruck {
		st.unlistSource(t, m)
	}
}
