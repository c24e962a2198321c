package scheduler

import "math/bits"

// The indexes below keep the scheduler's cost per event independent of the
// swarm size: which pieces someone could be served right now, which members
// have a free upload slot, and what changed since the parked polls were last
// retried. Every one is maintained where the state it summarises changes;
// checkIndex (index_test.go) recounts them from scratch.

// bitset is a set of piece indices.
type bitset []uint64

func (b *bitset) set(i int) {
	w := i >> 6
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w+1-len(*b))...)
	}
	(*b)[w] |= 1 << (uint(i) & 63)
}

func (b bitset) clear(i int) {
	if w := i >> 6; w < len(b) {
		b[w] &^= 1 << (uint(i) & 63)
	}
}

func (b bitset) has(i int) bool {
	w := i >> 6
	return i >= 0 && w < len(b) && b[w]&(1<<(uint(i)&63)) != 0
}

func (b bitset) empty() bool {
	for _, w := range b {
		if w != 0 {
			return false
		}
	}
	return true
}

// word returns word w of b, zero past its end.
func (b bitset) word(w int) uint64 {
	if w < len(b) {
		return b[w]
	}
	return 0
}

// cdnRoom says what the CDN may still take on: any piece only it may serve
// (free: it has a free slot), and copies of pieces peers hold (spare: fewer
// than dupLimit of its slots are taken).
type cdnRoom struct{ free, spare bool }

// dupLimit is how many CDN slots may be taken for the CDN to still send a
// piece some peer holds (all of whose holders are busy): half of them, so
// that the other half stays for pieces only the CDN has.
func dupLimit(cdnSlots int) int { return max(cdnSlots/2, 1) }

// room returns what the CDN may still take on with s.
func (s slots) room() cdnRoom {
	return cdnRoom{free: s.cdnBusy < s.cdn, spare: s.cdnBusy < dupLimit(s.cdn)}
}

// servable reports whether piece i can be served to someone who wants it as
// things stand: a peer that may serve it has a free slot, or none has and
// the CDN may serve it (cdnMay) and has room for it.
func (t *task) servable(i int, cdn cdnRoom) bool {
	return t.peerOK.has(i) || (cdn.free && t.cdnOK.has(i)) || (cdn.spare && t.cdnDup.has(i)) || i == t.arrivingOK()
}

// arrivingOK returns the arriving piece if the CDN may serve it now (it
// takes no CDN slot: only its fanout bounds it), else -1.
func (t *task) arrivingOK() int {
	if a := t.arriving; a >= 0 && t.cdnOK.has(a) && !t.isPublished(a) {
		return a
	}
	return -1
}

// servableWord returns word w of the servable pieces.
func (t *task) servableWord(w int, cdn cdnRoom) uint64 {
	x := t.peerOK.word(w)
	if cdn.free {
		x |= t.cdnOK.word(w)
	} else if a := t.arrivingOK(); a >= 0 && a>>6 == w {
		x |= 1 << (uint(a) & 63)
	}
	if cdn.spare {
		x |= t.cdnDup.word(w)
	}
	return x
}

// refresh recomputes the servability bits of piece i after one of their
// inputs changed (published, holders, free holders, CDN transfers), and
// records a piece that became servable for the parked polls.
func (st *state) refresh(t *task, i int) {
	pub := t.digests[i] != ""
	ok := pub && t.free[i] > 0
	// An arriving piece is served by the CDN only, like one no peer holds.
	cdn := (pub || t.isArriving(i)) && !ok && cdnMay(t, i, t.fanout)
	orphan := cdn && len(t.holders[i]) == 0
	dup := cdn && !orphan
	rose := false
	// The bits rarely change: test them inline, flip them out of line.
	if ok != t.peerOK.has(i) {
		rose = setBit(&t.peerOK, i, ok)
	}
	if orphan != t.cdnOK.has(i) {
		rose = setBit(&t.cdnOK, i, orphan) || rose
	}
	if dup != t.cdnDup.has(i) {
		rose = setBit(&t.cdnDup, i, dup) || rose
	}
	if rose && len(t.waiters) > 0 {
		st.changed(t).pieces.set(i)
	}
}

// setBit sets bit i of b to on and reports whether it rose.
func setBit(b *bitset, i int, on bool) bool {
	if on == b.has(i) {
		return false
	}
	if on {
		b.set(i)
	} else {
		b.clear(i)
	}
	return on
}

// fanoutFor is the fanout the CDN uses in t. When the CDN's upload rate is
// known and every member reported its download rate, it is as many copies
// as the CDN's link sends at once at the fastest member's rate (between 1
// and CDNPieceFanout), whatever the swarm's size. Otherwise it is
// CDNPieceFanout while t has no more members than the CDN has upload slots,
// so that it can serve all of them at once, and 1 (super-seeding) in a
// larger swarm, where the CDN's link is likely a small share of the swarm's
// and sending each new piece once, at full speed, is what everyone waits
// for.
func (st *state) fanoutFor(t *task) int {
	f := st.cfg.CDNPieceFanout
	if f == 1 {
		return 1
	}
	if st.cfg.CDNUploadRate > 0 && len(t.members) > 0 && t.unrated == 0 {
		return int(max(1, min(st.cfg.CDNUploadRate/t.maxRate, int64(f))))
	}
	if len(t.members) > st.cfg.CDNUploadSlots {
		return 1
	}
	return f
}

// addRate counts a joining member's reported download rate (0: none).
func (t *task) addRate(r int64) {
	if r == 0 {
		t.unrated++
		return
	}
	t.noteMax(r)
}

// removeRate forgets the rate of a member that has left t.members. The
// members are rescanned only when the last of the fastest has left.
func (t *task) removeRate(r int64) {
	if r == 0 {
		t.unrated--
		return
	}
	if r != t.maxRate {
		return
	}
	if t.atMax--; t.atMax > 0 {
		return
	}
	t.maxRate = 0
	for _, m := range t.members {
		t.noteMax(m.rate)
	}
}

// noteMax counts r in maxRate and atMax.
func (t *task) noteMax(r int64) {
	switch {
	case r > t.maxRate:
		t.maxRate, t.atMax = r, 1
	case r == t.maxRate && r > 0:
		t.atMax++
	}
}

// updateFanout recomputes t's CDN fanout after its members changed, and
// the servability of its pieces when the fanout changed.
func (st *state) updateFanout(t *task) {
	if f := st.fanoutFor(t); f != t.fanout {
		t.fanout = f
		st.refreshAll(t)
	}
}

// refreshAll recomputes the servability bits of every piece of t, after its
// CDN fanout changed (updateFanout). Paid only when the fanout changes: when
// the member count crosses the CDN's slot count, or the fastest member's
// rate changes.
func (st *state) refreshAll(t *task) {
	if st.cfg.CDNPieceFanout == 1 {
		return
	}
	for i := range t.digests {
		st.refresh(t, i)
	}
}

// cdnMay reports whether the CDN may start one more transfer of piece i,
// given that no peer holding it has a free slot: fewer than fanout of its
// transfers are in flight and, with a fanout of 1 (super-seeding), no peer
// holds it.
func cdnMay(t *task, i, fanout int) bool {
	if fanout <= 1 {
		return t.fromCDN[i] == 0 && len(t.holders[i]) == 0
	}
	return t.fromCDN[i] < fanout
}

// peerFree reports whether p has a free upload slot.
func (st *state) peerFree(p *peer) bool { return p.uploading < st.cfg.PeerUploadSlots }

// addUploads changes the uploads p serves by d. When p runs out of free
// slots, or gets one back, every piece it may serve loses or gains a free
// holder: the cost is the number of pieces p holds, paid only when p crosses
// its slot limit.
func (st *state) addUploads(p *peer, d int) {
	was := st.peerFree(p)
	p.uploading += d
	now := st.peerFree(p)
	delta := -1
	if now {
		delta = 1
	}
	for _, m := range p.tasks {
		t := m.task
		if t.isStruck(p.id) {
			continue
		}
		t.dropFree(m)
		if now {
			t.addFree(m) // under its new load
		}
		if was == now {
			continue
		}
		for wi, w := range m.held {
			for w != 0 {
				i := wi<<6 | bits.TrailingZeros64(w)
				w &= w - 1
				t.free[i] += delta
				if t.free[i] == max(delta, 0) { // 0 -> 1 or 1 -> 0
					st.refresh(t, i)
				}
			}
		}
	}
}

// addFree puts m in its task's members with a free upload slot, under its
// peer's current load.
func (t *task) addFree(m *member) {
	if m.freeAt >= 0 {
		return
	}
	l := m.peer.uploading
	for len(t.freeByLoad) <= l {
		t.freeByLoad = append(t.freeByLoad, nil)
	}
	m.freeLoad, m.freeAt = l, len(t.freeByLoad[l])
	t.freeByLoad[l] = append(t.freeByLoad[l], m)
	t.nfree++
}

// dropFree takes m out of its task's members with a free slot.
func (t *task) dropFree(m *member) {
	i := m.freeAt
	if i < 0 {
		return
	}
	b := t.freeByLoad[m.freeLoad]
	last := len(b) - 1
	moved := b[last]
	b[i] = moved
	moved.freeAt = i
	b[last] = nil
	t.freeByLoad[m.freeLoad] = b[:last]
	m.freeAt = -1
	t.nfree--
}

// syncBusy brings bit i of m.busy (held or in flight) up to date.
func (m *member) syncBusy(i int) {
	if m.held.has(i) || m.inflight[i] != nil {
		m.busy.set(i)
	} else {
		m.busy.clear(i)
	}
}

// touch has the parked polls of m retried at the next flush: m wants a piece
// again, or it completed the task.
func (st *state) touch(m *member) {
	if m.waiting == 0 || m.touched {
		return
	}
	m.touched = true
	c := st.changed(m.task)
	c.members = append(c.members, m)
}

// wants reports whether m neither holds nor has in flight some piece of c
// that its poll may get (only wanted ones when it asks for no others).
func (m *member) wants(c bitset) bool {
	for w, x := range c {
		x &^= m.busy.word(w)
		if m.bg == 0 {
			x &= m.want.word(w)
		}
		if x != 0 {
			return true
		}
	}
	return false
}
