package scheduler

import (
	"fmt"
	"math/bits"
	"slices"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// choice is one piece the policy picked for a requester, and its source.
type choice struct {
	piece int
	// from is the member to fetch from, nil for the CDN.
	from *member
}

// slots describes the upload capacity the policy may hand out.
type slots struct {
	// peer is the number of upload slots of every peer.
	peer int
	// cdn is the number of upload slots of the CDN, and cdnBusy how many of
	// them are taken.
	cdn, cdnBusy int
}

// selectionPolicy decides which pieces a peer fetches next and from whom. It
// reads the task and never changes it: the caller turns the choices into
// assignments. A policy answers at most max choices, each for a distinct
// published piece that the requester neither holds nor has in flight, from a
// source with a free slot that is neither the requester nor struck out.
type selectionPolicy interface {
	choose(t *task, req *member, max int, s slots) []choice
	// canServe reports whether choose could, as things stand, assign piece
	// i to req. choose answers nothing exactly when canServe is false for
	// every piece.
	canServe(t *task, req *member, i int, s slots) bool
}

// newPolicy returns the policy named by name.
func newPolicy(name string) (selectionPolicy, error) {
	switch name {
	case PolicyRarestFirst:
		return rarestFirst{}, nil
	default:
		return nil, fmt.Errorf("scheduler policy %q: must be %q: %w", name, PolicyRarestFirst, ErrInvalid)
	}
}

// rarestFirst orders the candidate pieces by rarity (peers holding the piece
// plus assignments of it in flight), then by index, and gives each one to the
// peer holding it with the fewest uploads in flight (ties broken by an order
// that depends on the piece, so equally loaded holders share the pieces).
// Counting in-flight assignments in the rarity spreads a flash crowd over all
// pieces instead of sending everyone to piece 0.
//
// The CDN is the source of last resort: it serves a piece only when no peer
// that may serve it has a free slot, to at most the task's fanout requesters
// at once (fanoutFor: from the CDN's and the members' rates when all are
// known, else CDNPieceFanout while the task has no more members than the
// CDN has slots, and one in a larger task).
// Peers with a free slot always come first, so the CDN's upload grows only
// while the peers' slots are all taken: the CDN fills the gap while a piece
// spreads hop by hop from peer to peer, instead of leaving the requesters
// idle. It sends a piece some peer holds only while fewer than half its slots
// are taken (dupLimit): the rest stay for the pieces only it has, which
// everyone else waits for. The origin is not involved: the CDN serves from
// its own copy.
//
// A requester is never sent to a source it reported corrupt (member.avoid);
// when every free holder of a piece is one of those, the CDN serves it
// within its fanout. A requester with a lapsed CDN assignment (not started
// in time), or an unproven one already holding a CDN assignment, gets
// nothing more from the CDN.
//
// With a fanout of 1 the CDN super-seeds (like a BitTorrent super-seed): it
// serves a piece only while no peer holds it, to one requester at a time, and
// a piece already on its way from the CDN to one peer is fetched from that
// peer once it has it. It then uploads each piece about once however large
// the swarm, and serves a piece again only when its copies are gone (holders
// left, expired, lost it or were struck out) or its CDN transfer ended
// without success.
type rarestFirst struct{}

func (rarestFirst) choose(t *task, req *member, max int, s slots) []choice {
	if max <= 0 {
		return nil
	}
	// Only the servable pieces can be chosen: ordering just those keeps a
	// poll's cost to what it may get, not to the task's size.
	var cdnOK, cdnDup bitset
	if room := s.room(); room.free && req.lapsed == 0 {
		cdnOK = t.cdnOK
		if room.spare {
			cdnDup = t.cdnDup
		}
	} else if a := t.arrivingOK(); a >= 0 && req.lapsed == 0 {
		// The arriving piece takes no CDN slot.
		cdnOK = make(bitset, a>>6+1)
		cdnOK.set(a)
	}
	order := t.order(req, t.peerOK, cdnOK, cdnDup)
	if len(order) == 0 {
		return nil
	}
	cdnBusy := s.cdnBusy
	// Wanted pieces come first in order; of the others at most req.bg.
	bgLeft := req.bg
	fanout := t.fanout
	// An unproven requester gets one CDN assignment at a time.
	cdnLeft := s.cdn
	if !req.proven {
		cdnLeft = 1 - req.fromCDN
	}
	// Slots taken by the choices made so far in this call.
	var taken takenSlots
	var out []choice
	for _, key := range order {
		if len(out) == max {
			break
		}
		i := int(uint32(key))
		background := key&notWanted != 0
		if background && bgLeft == 0 {
			break
		}
		n := len(out)
		var best *member
		if t.digests[i] != "" {
			// An arriving piece comes from the CDN only.
			best = leastLoaded(t, i, req, &taken, s.peer)
		}
		switch {
		case best != nil:
			taken.add(best.peer)
			out = append(out, choice{piece: i, from: best})
		case req.lapsed > 0 || cdnLeft <= 0:
			// It has not started what the CDN last sent it, or has not
			// proven it fetches at all.
		case t.digests[i] == "":
			// Arriving: sent at the origin's pace, it takes no CDN slot;
			// its fanout bounds it.
			if cdnMay(t, i, fanout) {
				cdnLeft--
				out = append(out, choice{piece: i})
			}
		case cdnBusy < s.cdn && cdnMay(t, i, fanout) && (len(t.holders[i]) == 0 || cdnBusy < dupLimit(s.cdn)),
			// Every holder with a free slot is one req no longer fetches
			// from (it reported the peer corrupt): the CDN stands in.
			cdnBusy < s.cdn && len(req.avoid) > 0 && t.fromCDN[i] < fanout:
			cdnBusy++
			cdnLeft--
			out = append(out, choice{piece: i})
		}
		if background && len(out) > n && bgLeft > 0 {
			bgLeft--
		}
	}
	return out
}

// takenSlots counts the slots of each peer taken within one choose call
// (at most schedapi.MaxAssignments entries: a linear search is cheapest).
type takenSlots []struct {
	p *peer
	n int
}

func (ts *takenSlots) add(p *peer) {
	for k := range *ts {
		if (*ts)[k].p == p {
			(*ts)[k].n++
			return
		}
	}
	*ts = append(*ts, struct {
		p *peer
		n int
	}{p, 1})
}

func (ts takenSlots) of(p *peer) int {
	for _, e := range ts {
		if e.p == p {
			return e.n
		}
	}
	return 0
}

// leastLoaded returns the holder of piece i with the fewest uploads (its
// own plus those taken in this call) and a free slot, req excepted. When the
// piece has fewer holders than the task has members with a free slot, it
// walks the holders from a point that depends on the piece, so that equally
// loaded holders share the pieces, and stops at the first idle one.
// Otherwise it walks the members with a free slot, least loaded first, and
// stops at the first holder that no less loaded one can beat. In a busy swarm
// few members have a free slot; in an idle one the first holder is idle:
// either way the walk is short.
func leastLoaded(t *task, i int, req *member, taken *takenSlots, slots int) *member {
	if t.nfree < len(t.holders[i]) {
		return leastLoadedFree(t, i, req, taken, slots)
	}
	return leastLoadedHolder(t, i, req, taken, slots)
}

// leastLoadedHolder is leastLoaded over the holders of the piece.
func leastLoadedHolder(t *task, i int, req *member, taken *takenSlots, slots int) *member {
	holders := t.holders[i]
	n := len(holders)
	if n == 0 {
		return nil
	}
	var best *member
	bestLoad := slots
	start := int(spread(uint64(n), i) % uint64(n))
	for k := range n {
		m := holders[(start+k)%n]
		if m == req || req.avoids(m.peer) {
			continue
		}
		if l := m.peer.uploading + taken.of(m.peer); l < bestLoad {
			best, bestLoad = m, l
			if l == 0 {
				break
			}
		}
	}
	return best
}

// leastLoadedFree is leastLoaded over the members with a free slot.
func leastLoadedFree(t *task, i int, req *member, taken *takenSlots, slots int) *member {
	var best *member
	bestLoad := slots
	for load, ms := range t.freeByLoad {
		if load >= bestLoad {
			break // nobody from here on can beat best
		}
		n := len(ms)
		if n == 0 {
			continue
		}
		start := int(spread(uint64(n), i) % uint64(n))
		for k := range n {
			m := ms[(start+k)%n]
			if m == req || !m.held.has(i) || req.avoids(m.peer) {
				continue
			}
			if l := load + taken.of(m.peer); l < bestLoad {
				best, bestLoad = m, l
				if l == load {
					break // the least this load can do
				}
			}
		}
	}
	return best
}

func (rarestFirst) canServe(t *task, req *member, i int, s slots) bool {
	if !(t.isPublished(i) || t.isArriving(i)) || req.busy.has(i) || (req.bg == 0 && !req.want.has(i)) {
		return false
	}
	if req.lapsed > 0 || (!req.proven && req.fromCDN > 0) {
		return t.peerOK.has(i) // and the CDN's room is not for req
	}
	return t.servable(i, s.room())
}

// candidates returns the published pieces req neither holds nor has in
// flight, rarest first and then by index.
func candidates(t *task, req *member) []int {
	keys := t.order(req, t.pub, nil, nil)
	out := make([]int, len(keys))
	for k, key := range keys {
		out[k] = int(uint32(key))
	}
	return out
}

// notWanted is the key bit of a piece req's poll does not want first.
const notWanted = 1 << 63

// order returns the pieces of a, b or c that req neither holds nor has in
// flight: those its poll wants first (req.want) before the others, and
// within each, rarest first (peers holding the piece plus assignments of it
// in flight) and then by index, each as notWanted | rarity<<32 | index. The
// slice is the task's scratch buffer, valid until the next call.
func (t *task) order(req *member, a, b, c bitset) []uint64 {
	keys := t.scratch[:0]
	for w := range max(len(a), len(b), len(c)) {
		x := (a.word(w) | b.word(w) | c.word(w)) &^ req.busy.word(w)
		wanted := req.want.word(w)
		for x != 0 {
			bit := x & -x
			i := w<<6 | bits.TrailingZeros64(x)
			x &^= bit
			key := uint64(min(t.rarity(i), 1<<31-1))<<32 | uint64(i)
			if wanted&bit == 0 {
				key |= notWanted
			}
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	t.scratch = keys
	return keys
}

// spread mixes a value with a piece index (splitmix64 finaliser).
func spread(h uint64, piece int) uint64 {
	x := h ^ (uint64(piece)+1)*0x9e3779b97f4a7c15
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// failureKind classifies the reason of a failed piece transfer.
type failureKind int

const (
	// failTransfer is any failure that may be transient: connection
	// refused, timeout, a server error.
	failTransfer failureKind = iota
	// failMissing: the source answered that it does not have the piece
	// ("range not available", a 404). It counts as a transfer failure and
	// the source no longer counts as a holder of the piece.
	failMissing
	// failIntegrity: the bytes served did not match the piece's digest or
	// size. The source is struck out of the task at once.
	failIntegrity
	// failRequester: the requester gave up on its own (it was cancelled, or
	// found the assignment unusable); the source is not to blame.
	failRequester
)

// classifyFailure maps the reason of a failed schedapi.PieceResult to a
// failure kind. An empty or unknown reason is a transfer failure.
func classifyFailure(reason schedapi.FailureReason) failureKind {
	switch reason {
	case schedapi.ReasonCorrupt:
		return failIntegrity
	case schedapi.ReasonMissing:
		return failMissing
	case schedapi.ReasonAborted:
		return failRequester
	default:
		return failTransfer
	}
}

// strikeRecord counts one peer's failures as a source in one task, and its
// conduct as a requester there. It outlives the peer's membership, so that
// leaving and registering again wipes nothing.
type strikeRecord struct {
	failures int
	struck   bool

	// used counts the requester's assignments it reported; unused those
	// that expired or were revoked without a report.
	used, unused int
	// contradicted counts the requester's corrupt reports that another
	// requester contradicted: it verified the same piece from the same
	// source.
	contradicted int
	// barred: the requester gets no more assignments in the task and its
	// reports are ignored. A barred peer is struck out as a source too.
	barred bool
}

// strike returns the record after one more failure of kind k, and whether
// this failure struck the peer out.
func strike(rec strikeRecord, k failureKind, limit int) (strikeRecord, bool) {
	if rec.struck {
		return rec, false
	}
	rec.failures++
	if k == failIntegrity || rec.failures >= limit {
		rec.struck = true
		return rec, true
	}
	return rec, false
}
