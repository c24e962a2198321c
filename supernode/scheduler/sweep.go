package scheduler

// Sweep: the periodic pass that times out assignments, expires silent peers
// and forgets settled tasks.

import (
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// sweep times out stale assignments (and CDN assignments not started in
// time), counting each against its requester, expires silent peers, and
// forgets failed tasks past FailedTaskTTL and succeeded ones without members
// for IdleTaskTTL. It also has every parked poll retried, a safety net
// that bounds how long a poll can miss a change.
func (st *state) sweep() {
	st.lapseDue()
	now := st.now()
	for _, t := range st.tasks {
		if len(t.waiters) > 0 {
			st.changedAll(t)
		}
	}
	for _, t := range st.tasks {
		for _, m := range t.members {
			for _, a := range m.inflight {
				switch {
				case !a.started && !now.Before(a.startBy):
					st.log.Debug("CDN assignment not started", zap.Stringer("task", t.id), zap.String("peer", m.peer.id), zap.Int("piece", a.piece))
				case !now.Before(a.deadline):
					st.log.Debug("assignment timed out", zap.Stringer("task", t.id), zap.String("peer", m.peer.id), zap.Int("piece", a.piece))
				default:
					continue
				}
				st.endAssignment(a, false)
				st.unused(t, m)
			}
		}
	}
	for id, p := range st.peers {
		if p.polling > 0 {
			p.lastSeen = now
		}
		if now.Sub(p.lastSeen) < st.cfg.PeerTTL {
			continue
		}
		for _, m := range p.tasks {
			st.dropMember(m)
		}
		delete(st.peers, id)
		st.log.Info("peer expired", zap.String("peer", id), zap.Time("lastSeen", p.lastSeen))
	}
	for _, t := range st.tasks {
		failed := t.state == schedapi.TaskFailed && now.Sub(t.failedAt) >= st.cfg.FailedTaskTTL
		idle := t.state == schedapi.TaskSucceeded && len(t.members) == 0 && now.Sub(t.emptySince) >= st.cfg.IdleTaskTTL
		if !failed && !idle {
			continue
		}
		st.dropTask(t)
		if !idle {
			continue
		}
		st.log.Info("idle task forgotten", zap.Stringer("task", t.id), zap.Time("emptySince", t.emptySince))
		if st.forgotten != nil {
			st.forgotten(t.id)
		}
	}
}
