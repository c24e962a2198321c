package scheduler

// The scheduler's state, owned by the event loop: its model (peers, tasks,
// members, assignments, parked polls) and the bookkeeping of what changed.
// The operations on it are split by concern: lifecycle.go, membership.go,
// assignment.go, results.go, sweep.go.

import (
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// maxPieces bounds the piece index of a task, whatever its size: a million
// pieces, as many as a piece.Set carries on the wire.
const maxPieces = 1 << 20

// maxErrorLen bounds the error text of a failed task that peers are told.
const maxErrorLen = 1024

// peer is a peer known to the scheduler, in any number of tasks.
type peer struct {
	id, addr string
	lastSeen time.Time
	// uploading counts the assignments this peer serves, over all tasks:
	// the upload slots it has taken.
	uploading int
	// polling counts the peer's parked polls: a peer waiting in a long poll
	// is alive.
	polling int
	tasks   map[taskid.ID]*member
}

// member is one peer in one task.
type member struct {
	peer *peer
	task *task
	// have holds the pieces the peer has verified and reported (or
	// declared when it joined).
	have *piece.Set
	// inflight holds the assignments this peer is downloading, by piece.
	inflight map[int]*assignment
	// serving holds the assignments this peer is the source of.
	serving map[*assignment]struct{}

	// held mirrors have; busy holds the pieces held or in flight, those
	// the member does not want.
	held, busy bitset
	// freeAt is the member's place in its task's freeByLoad[freeLoad], -1
	// when it is not there.
	freeAt, freeLoad int
	// rate is the DownloadRate the peer reported when it joined (0:
	// unknown).
	rate int64
	// waiting counts the member's parked polls; touched is set while it is
	// in the current change record's members.
	waiting int
	touched bool
	// avoid lists the sources this member reported corrupt: it is not
	// sent to them again, whether or not others corroborate it.
	avoid []*peer
	// lapsed counts the member's lapsed CDN assignments: while it has any,
	// it is sent nothing more from the CDN.
	lapsed int
	// fromCDN counts the member's CDN assignments in flight. Until it is
	// proven (a CDN transfer of it started, or it reported a piece
	// verified) it gets one at a time: a hoarder takes one piece from the
	// CDN, not all of them.
	fromCDN int
	proven  bool
	// servedOK holds the pieces this member served, as an assigned
	// source, that the requester verified: evidence against a corrupt
	// report of the same piece from it.
	servedOK bitset
	// want holds the pieces the member's current poll wants first (its
	// readers need them now), and bg caps the other pieces that poll may
	// get (< 0: no cap). Set from the poll being answered.
	want bitset
	bg   int
}

// avoids reports whether m is not to be sent to p.
func (m *member) avoids(p *peer) bool {
	for _, a := range m.avoid {
		if a == p {
			return true
		}
	}
	return false
}

// assignment is one piece in flight from a source to a requester. It holds
// one upload slot of its source until it ends.
type assignment struct {
	task     *task
	piece    int
	to       *member
	from     *member // nil when the CDN is the source
	length   int64
	deadline time.Time
	// started is false for a CDN assignment whose transfer the CDN has not
	// reported started yet (WithStartReports); at is when it was made, and
	// startBy when it is revoked if it has not started.
	started bool
	at      time.Time
	startBy time.Time
	// arriving: a CDN assignment of a piece not yet published (the CDN
	// receives it); it takes no CDN slot (takeCDNOf).
	arriving bool
	// lapsed: a CDN assignment not started within cdnLapse. It no longer
	// holds a CDN slot nor counts towards its piece's fanout, so that
	// others may be sent the piece; it takes them again if it starts.
	lapsed bool
}

// task is the scheduler's view of one task.
type task struct {
	id        taskid.ID
	url       string
	pieceSize int64
	size      int64 // -1 until known
	count     int   // -1 until known
	content   digest.Digest
	state     schedapi.TaskState
	err       string

	// digests, holders, inflight and fromCDN are indexed by piece and
	// always have the same length: the piece count when known, else one
	// past the highest piece published so far.
	digests []digest.Digest // "" until published
	// piecesDigest is piece.ListDigest of digests, set when the task
	// succeeds (schedapi.TaskInfo.PiecesDigest).
	piecesDigest digest.Digest
	pub          bitset // the published pieces
	published    int
	// arriving is the piece the CDN is receiving from the origin
	// (PieceArriving), not yet published, -1 when none or cut-through is
	// off. While no peer holds it, the CDN may serve it (cdnOK) as it
	// arrives.
	arriving int
	// holders lists the members holding each piece that may serve it: a
	// struck-out member is not listed.
	holders  [][]*member
	inflight []int
	// fromCDN counts the assignments of each piece served by the CDN.
	fromCDN []int
	// free counts the holders of each piece whose peer has a free upload
	// slot.
	free []int
	// peerOK holds the published pieces with a free holder; cdnOK the
	// published pieces no peer holds, cdnDup those whose holders are all
	// busy, that the CDN may serve (cdnMay). With the CDN's room they are
	// what can be served right now.
	peerOK, cdnOK, cdnDup bitset
	// freeByLoad lists the members, not struck out, whose peer has a free
	// upload slot, by the peer's uploads; nfree counts them.
	freeByLoad [][]*member
	nfree      int
	// ch records what changed since the parked polls were last retried,
	// nil when nothing did; spare is the last record, kept for reuse.
	ch, spare *changes
	// scratch is the policy's reusable buffer.
	scratch []uint64

	members map[string]*member
	strikes map[string]strikeRecord
	// accused holds the corrupt reports not yet corroborated nor
	// contradicted: by accused source peer ID, the pieces each accuser
	// reported corrupt from it.
	accused map[string]map[string][]int
	waiters []*waiter
	// fanout is the CDN's fanout in this task (fanoutFor), kept current as
	// members come and go; unrated counts the members that reported no
	// download rate, maxRate is the fastest reported one and atMax how many
	// members reported it (so that members leaving rescan the task only
	// when the last of the fastest goes).
	fanout  int
	unrated int
	maxRate int64
	atMax   int

	createdAt, failedAt time.Time
	// emptySince is when the last member left (or the task was created).
	emptySince                   time.Time
	bytesFromCDN, bytesFromPeers int64
	// delivered counts the pieces delivered (reported OK) by sender and
	// receiver peer ID, for the dashboard's transfer graph; bounded by
	// maxEdges.
	delivered map[edge]int
}

func (t *task) rarity(i int) int { return len(t.holders[i]) + t.inflight[i] }

func (t *task) isStruck(peerID string) bool { return t.strikes[peerID].struck }

func (t *task) info() schedapi.TaskInfo {
	info := schedapi.TaskInfo{
		TaskID:        t.id.String(),
		State:         t.state,
		Size:          t.size,
		PieceSize:     t.pieceSize,
		PieceCount:    t.count,
		ContentDigest: t.content.String(),
		Error:         t.err,
	}
	if t.state == schedapi.TaskSucceeded {
		info.PiecesDigest = t.piecesDigest.String()
	}
	return info
}

// grow makes the piece-indexed slices at least n long.
func (t *task) grow(n int) {
	if n <= len(t.digests) {
		return
	}
	extra := n - len(t.digests)
	t.digests = append(t.digests, make([]digest.Digest, extra)...)
	t.holders = append(t.holders, make([][]*member, extra)...)
	t.inflight = append(t.inflight, make([]int, extra)...)
	t.fromCDN = append(t.fromCDN, make([]int, extra)...)
	t.free = append(t.free, make([]int, extra)...)
}

// isArriving reports whether piece i is the unpublished piece the CDN is
// receiving, which only it may serve.
func (t *task) isArriving(i int) bool {
	return i == t.arriving && i >= 0 && i < len(t.digests) && t.digests[i] == "" && len(t.holders[i]) == 0
}

// isPublished reports whether piece i has a digest.
func (t *task) isPublished(i int) bool { return i >= 0 && i < len(t.digests) && t.digests[i] != "" }

// complete reports whether m holds every piece of a succeeded task.
func (t *task) complete(m *member) bool {
	return t.state == schedapi.TaskSucceeded && m.have.Len() >= t.count && m.have.HasAll(t.count)
}

// pollReply is the answer to a poll.
type pollReply struct {
	resp schedapi.PiecesResponse
	err  error
}

// waiter is one poll. It is answered exactly once, on reply (buffered).
type waiter struct {
	taskID taskid.ID
	peerID string
	max    int
	reply  chan pollReply
	// want holds the pieces the poll asks for first, wantList the same in
	// order; bg caps the other pieces (< 0: no cap).
	want     bitset
	wantList []int
	bg       int

	// Set by the event loop.
	t        *task
	m        *member
	state    schedapi.TaskState // the task's state when the poll arrived
	parked   bool
	answered bool
	given    []*assignment // the assignments of the answer
	// notify, if set, is called when the poll is answered (SimState).
	notify func(*waiter)
}

func newWaiter(taskID taskid.ID, peerID string, max int) *waiter {
	return &waiter{taskID: taskID, peerID: peerID, max: max, bg: -1, reply: make(chan pollReply, 1)}
}

// setWant records what the poll asks for first.
func (w *waiter) setWant(want schedapi.Want) {
	w.wantList, w.bg = want.Pieces, want.Background
	for _, i := range want.Pieces {
		w.want.set(i)
	}
}

// wanting reports whether the poll asks for some pieces first.
func (w *waiter) wanting() bool { return len(w.wantList) > 0 }

func (w *waiter) answer(resp schedapi.PiecesResponse, err error) {
	if w.answered {
		return
	}
	if w.parked {
		w.m.peer.polling--
		w.m.waiting--
	}
	w.answered, w.parked = true, false
	w.reply <- pollReply{resp: resp, err: err}
	if w.notify != nil {
		w.notify(w)
	}
}

// state is everything the scheduler knows. It is owned by one goroutine (the
// event loop) or, in tests, by the test itself; nothing in it blocks.
type state struct {
	cfg    Config
	cdn    schedapi.Peer
	policy selectionPolicy
	now    func() time.Time
	log    *zap.Logger
	m      *metrics

	tasks map[taskid.ID]*task
	peers map[string]*peer
	// cdnBusy is the number of CDN upload slots taken.
	cdnBusy int
	// assignments counts assignments in flight, over all tasks.
	assignments int
	// dirty lists the tasks with a change record (task.ch) since the last
	// flush.
	dirty []*task
	// want is flush's reusable buffer.
	want bitset
	// startReports: the CDN reports the start of its transfers (started);
	// CDN assignments not started within CDNStartGrace are revoked.
	startReports bool
	// fresh lists, oldest first, the CDN assignments made while
	// startReports, to lapse those not started in time (lapseDue). Entries
	// that ended, started or lapsed are skipped.
	fresh []*assignment
	// forgotten, if set, is told the ID of each idle task the sweep
	// forgets.
	forgotten func(taskID taskid.ID)
	// cdnCorrupt, if set, is told each corrupt report against a CDN
	// assignment (WithCDNCorruptReport).
	cdnCorrupt func(taskID taskid.ID, piece int)
	// demand, if set, is handed the wanted pieces a task does not have
	// yet; it returns at once (the CDN's Demand).
	demand func(taskID taskid.ID, pieces []int)
}

// changes records what improved in a task since its parked polls were last
// retried, so that flush retries only the polls that may gain from it.
type changes struct {
	// all: retry every parked poll (the task changed state, or a sweep).
	all bool
	// pieces: pieces that became servable (task.refresh).
	pieces bitset
	// cdn: the CDN got a free upload slot back (or one under dupLimit),
	// so the cdnOK (or cdnDup) pieces became servable.
	cdn bool
	// members: members with parked polls that want a piece again (an
	// assignment of theirs ended without the piece, or they lost it) or
	// that completed the task.
	members []*member
}

func newState(cfg Config, cdn schedapi.Peer, p selectionPolicy, now func() time.Time, log *zap.Logger, m *metrics) *state {
	return &state{
		cfg:    cfg,
		cdn:    cdn,
		policy: p,
		now:    now,
		log:    log,
		m:      m,
		tasks:  make(map[taskid.ID]*task),
		peers:  make(map[string]*peer),
	}
}

func (st *state) task(id taskid.ID) (*task, error) {
	t := st.tasks[id]
	if t == nil {
		return nil, fmt.Errorf("task %s: %w", id, ErrTaskNotFound)
	}
	return t, nil
}

func (st *state) member(taskID taskid.ID, peerID string) (*task, *member, error) {
	t, err := st.task(taskID)
	if err != nil {
		return nil, nil, err
	}
	m := t.members[peerID]
	if m == nil {
		return nil, nil, fmt.Errorf("peer %s in task %s: %w", peerID, taskID, ErrPeerNotFound)
	}
	return t, m, nil
}

// changed returns the change record of t, creating it.
func (st *state) changed(t *task) *changes {
	if t.ch == nil {
		t.ch, t.spare = t.spare, nil
		if t.ch == nil {
			t.ch = &changes{}
		}
		st.dirty = append(st.dirty, t)
	}
	return t.ch
}

// changedAll marks every parked poll of t for a retry.
func (st *state) changedAll(t *task) { st.changed(t).all = true }

// changedCDN records that the CDN got a free upload slot back, in every
// task with parked polls.
func (st *state) changedCDN() {
	for _, t := range st.tasks {
		if len(t.waiters) > 0 {
			st.changed(t).cdn = true
		}
	}
}

func (st *state) setState(t *task, s schedapi.TaskState) {
	st.m.taskState(t.state, s)
	t.state = s
	st.changedAll(t)
}
