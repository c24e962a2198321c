package scheduler

// Membership: peers are admitted to and join tasks with the pieces they
// hold, leave them, and heartbeat. Every function runs on the event loop.

import (
	"fmt"
	"net"
	"slices"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// validPeerID reports whether id is 1 to 128 characters of [A-Za-z0-9._-].
func validPeerID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	return err == nil && host != "" && port != ""
}

func (st *state) checkPeer(p schedapi.Peer) error {
	if !validPeerID(p.ID) {
		return fmt.Errorf("peer id %q: must be 1 to 128 of [A-Za-z0-9._-]: %w", p.ID, ErrInvalid)
	}
	if p.ID == st.cdn.ID {
		return fmt.Errorf("peer id %q: taken by the supernode: %w", p.ID, ErrInvalid)
	}
	if !validAddr(p.Addr) {
		return fmt.Errorf("peer %s addr %q: must be host:port: %w", p.ID, p.Addr, ErrInvalid)
	}
	if p.DownloadRate < 0 {
		return fmt.Errorf("peer %s download rate %d: must not be negative: %w", p.ID, p.DownloadRate, ErrInvalid)
	}
	return nil
}

// seen returns the peer with id, refreshed, creating it if needed.
func (st *state) seen(id, addr string) *peer {
	p := st.peers[id]
	if p == nil {
		p = &peer{id: id, tasks: make(map[taskid.ID]*member)}
		st.peers[id] = p
	}
	if addr != "" {
		p.addr = addr
	}
	p.lastSeen = st.now()
	return p
}

func (st *state) admit(taskID taskid.ID, peerID string) error {
	if p := st.peers[peerID]; p != nil && p.tasks[taskID] == nil && len(p.tasks) >= st.cfg.MaxTasksPerPeer {
		return fmt.Errorf("admit %s: peer %s is in %d tasks (maxTasksPerPeer): %w", taskID, peerID, len(p.tasks), ErrLimit)
	}
	if t := st.tasks[taskID]; t == nil && len(st.tasks) >= st.cfg.MaxTasks {
		return fmt.Errorf("admit %s: %d tasks known (maxTasks): %w", taskID, len(st.tasks), ErrLimit)
	}
	return nil
}

func (st *state) join(taskID taskid.ID, sp schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error) {
	if err := st.checkPeer(sp); err != nil {
		return schedapi.TaskInfo{}, fmt.Errorf("join: %w", err)
	}
	t, err := st.task(taskID)
	if err != nil {
		return schedapi.TaskInfo{}, fmt.Errorf("join: %w", err)
	}
	if p := st.peers[sp.ID]; p != nil && p.tasks[taskID] == nil && len(p.tasks) >= st.cfg.MaxTasksPerPeer {
		st.log.Warn("join refused: peer in too many tasks", zap.Stringer("task", taskID), zap.String("peer", sp.ID),
			zap.Int("maxTasksPerPeer", st.cfg.MaxTasksPerPeer))
		return schedapi.TaskInfo{}, fmt.Errorf("join %s: peer %s is in %d tasks (maxTasksPerPeer): %w", taskID, sp.ID, len(p.tasks), ErrLimit)
	}
	p := st.seen(sp.ID, sp.Addr)
	m := t.members[p.id]
	if m == nil {
		m = &member{
			peer:     p,
			task:     t,
			have:     &piece.Set{},
			inflight: make(map[int]*assignment),
			serving:  make(map[*assignment]struct{}),
			freeAt:   -1,
			rate:     sp.DownloadRate,
			bg:       -1,
			proven:   !st.startReports,
		}
		t.members[p.id] = m
		p.tasks[t.id] = m
		if st.peerFree(p) && !t.isStruck(p.id) {
			t.addFree(m)
		}
		t.addRate(m.rate)
		st.updateFanout(t)
	}
	for _, i := range have.Indices() {
		// With the count known, a declared piece is taken even if not yet
		// published (the CDN may still be on its way to it); without, only
		// published pieces can be checked.
		if (t.count >= 0 && i >= t.count) || (t.count < 0 && !t.isPublished(i)) {
			continue
		}
		st.addHeld(m, i)
	}
	return t.info(), nil
}

// addHeld records that m holds piece i.
func (st *state) addHeld(m *member, i int) {
	if m.have.Has(i) {
		return
	}
	m.have.Add(i)
	m.held.set(i)
	m.busy.set(i)
	t := m.task
	if !t.isStruck(m.peer.id) {
		t.grow(i + 1)
		t.holders[i] = append(t.holders[i], m)
		if st.peerFree(m.peer) {
			t.free[i]++
		}
		st.refresh(t, i)
	}
	if m.waiting > 0 && t.complete(m) {
		st.touch(m)
	}
}

// dropHeld records that m does not hold piece i after all.
func (st *state) dropHeld(m *member, i int) {
	if !m.have.Has(i) {
		return
	}
	m.have.Remove(i)
	m.held.clear(i)
	m.syncBusy(i)
	st.unlistHolder(m.task, i, m)
	st.touch(m)
}

// unlistHolder stops counting m as a source of piece i. When it was the
// last, the CDN may serve the piece again. A member struck out of the task
// also leaves the task's free members.
func (st *state) unlistHolder(t *task, i int, m *member) {
	if t.isStruck(m.peer.id) {
		t.dropFree(m)
	}
	if i >= len(t.holders) {
		return
	}
	hs := t.holders[i]
	if j := slices.Index(hs, m); j >= 0 {
		hs[j] = hs[len(hs)-1]
		hs[len(hs)-1] = nil
		t.holders[i] = hs[:len(hs)-1]
		if st.peerFree(m.peer) {
			t.free[i]--
		}
		st.refresh(t, i)
	}
}

// dropMember takes m out of its task: its assignments, as requester and as
// source, end; its parked polls are answered ErrPeerNotFound.
func (st *state) dropMember(m *member) {
	t := m.task
	for _, a := range m.inflight {
		st.endAssignment(a, false)
	}
	for a := range m.serving {
		st.endAssignment(a, false)
	}
	if !t.isStruck(m.peer.id) {
		for _, i := range m.have.Indices() {
			st.unlistHolder(t, i, m)
		}
	}
	t.dropFree(m)
	kept := t.waiters[:0]
	for _, w := range t.waiters {
		if w.m == m {
			w.answer(schedapi.PiecesResponse{}, fmt.Errorf("peer %s in task %s: %w", m.peer.id, t.id, ErrPeerNotFound))
			continue
		}
		kept = append(kept, w)
	}
	clear(t.waiters[len(kept):])
	t.waiters = kept
	delete(t.members, m.peer.id)
	delete(m.peer.tasks, t.id)
	if len(t.members) == 0 {
		t.emptySince = st.now()
	}
	t.removeRate(m.rate)
	st.updateFanout(t)
}

func (st *state) leave(taskID taskid.ID, peerID string) error {
	_, m, err := st.member(taskID, peerID)
	if err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	st.dropMember(m)
	return nil
}

func (st *state) heartbeat(peerID, addr string, tasks []taskid.ID) ([]taskid.ID, error) {
	if !validPeerID(peerID) || peerID == st.cdn.ID {
		return nil, fmt.Errorf("heartbeat: peer id %q: %w", peerID, ErrInvalid)
	}
	if addr != "" && !validAddr(addr) {
		return nil, fmt.Errorf("heartbeat: peer %s addr %q: %w", peerID, addr, ErrInvalid)
	}
	var p *peer
	if addr != "" || st.peers[peerID] != nil {
		p = st.seen(peerID, addr)
	}
	var unknown []taskid.ID
	for _, id := range tasks {
		if p == nil || p.tasks[id] == nil {
			unknown = append(unknown, id)
		}
	}
	return unknown, nil
}
