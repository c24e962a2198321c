package scheduler

import (
	"fmt"
	"net"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/redact"
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
	tasks   map[string]*member
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
	// lapsed: a CDN assignment not started within cdnLapse. It no longer
	// holds a CDN slot nor counts towards its piece's fanout, so that
	// others may be sent the piece; it takes them again if it starts.
	lapsed bool
}

// task is the scheduler's view of one task.
type task struct {
	id, url   string
	pieceSize int64
	size      int64 // -1 until known
	count     int   // -1 until known
	content   digest.Digest
	state     schedapi.TaskState
	err       string

	// digests, holders, inflight and fromCDN are indexed by piece and
	// always have the same length: the piece count when known, else one
	// past the highest piece published so far.
	digests   []digest.Digest // "" until published
	pub       bitset          // the published pieces
	published int
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
}

func (t *task) rarity(i int) int { return len(t.holders[i]) + t.inflight[i] }

func (t *task) isStruck(peerID string) bool { return t.strikes[peerID].struck }

func (t *task) info() schedapi.TaskInfo {
	return schedapi.TaskInfo{
		TaskID:        t.id,
		State:         t.state,
		Size:          t.size,
		PieceSize:     t.pieceSize,
		PieceCount:    t.count,
		ContentDigest: t.content.String(),
		Error:         t.err,
	}
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
	taskID, peerID string
	max            int
	reply          chan pollReply

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

func newWaiter(taskID, peerID string, max int) *waiter {
	return &waiter{taskID: taskID, peerID: peerID, max: max, reply: make(chan pollReply, 1)}
}

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

	tasks map[string]*task
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
	forgotten func(taskID string)
	// cdnCorrupt, if set, is told each corrupt report against a CDN
	// assignment (WithCDNCorruptReport).
	cdnCorrupt func(taskID string, piece int)
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
		tasks:  make(map[string]*task),
		peers:  make(map[string]*peer),
	}
}

func (st *state) task(id string) (*task, error) {
	t := st.tasks[id]
	if t == nil {
		return nil, fmt.Errorf("task %s: %w", id, ErrTaskNotFound)
	}
	return t, nil
}

func (st *state) member(taskID, peerID string) (*task, *member, error) {
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

func (st *state) addTask(spec TaskSpec) error {
	if err := taskid.Validate(spec.ID); err != nil {
		return fmt.Errorf("add task: %w: %w", err, ErrInvalid)
	}
	if spec.ContentDigest != "" {
		if err := spec.ContentDigest.Validate(); err != nil {
			return fmt.Errorf("add task %s: content digest: %w: %w", spec.ID, err, ErrInvalid)
		}
	}
	size := spec.Size
	if size < 0 {
		size = -1
	}
	pieceSize := spec.PieceSize
	if pieceSize <= 0 {
		pieceSize = piece.SizeFor(size)
	}
	count := piece.Count(size, pieceSize)
	if count > maxPieces {
		return fmt.Errorf("add task %s: %d pieces, more than %d: %w", spec.ID, count, maxPieces, ErrInvalid)
	}
	if old := st.tasks[spec.ID]; old != nil {
		if old.state != schedapi.TaskFailed {
			return fmt.Errorf("add task %s: %w", spec.ID, ErrTaskExists)
		}
		st.dropTask(old)
	} else if len(st.tasks) >= st.cfg.MaxTasks {
		st.log.Warn("task refused: too many tasks", zap.String("task", spec.ID), zap.Int("maxTasks", st.cfg.MaxTasks))
		return fmt.Errorf("add task %s: %d tasks known (maxTasks): %w", spec.ID, len(st.tasks), ErrLimit)
	}
	t := &task{
		id:        spec.ID,
		url:       redact.URL(spec.URL),
		pieceSize: pieceSize,
		size:      size,
		count:     count,
		content:   spec.ContentDigest,
		members:   make(map[string]*member),
		strikes:   make(map[string]strikeRecord),
		accused:   make(map[string]map[string][]int),
		createdAt: st.now(),
	}
	t.emptySince = t.createdAt
	t.fanout = st.fanoutFor(t)
	t.grow(max(count, 0))
	st.tasks[t.id] = t
	st.setState(t, schedapi.TaskRunning)
	st.log.Info("task added", zap.String("task", t.id), zap.Int64("size", size), zap.Int64("pieceSize", pieceSize))
	return nil
}

// fitCount records a now known piece count, checking nothing is published
// past it.
func (t *task) fitCount(size int64) error {
	count := piece.Count(size, t.pieceSize)
	if count > maxPieces {
		return fmt.Errorf("%d pieces, more than %d", count, maxPieces)
	}
	for i := count; i < len(t.digests); i++ {
		if t.digests[i] != "" {
			return fmt.Errorf("piece %d is published but size %d has %d pieces", i, size, count)
		}
	}
	t.grow(count)
	t.digests, t.holders, t.inflight, t.fromCDN = t.digests[:count], t.holders[:count], t.inflight[:count], t.fromCDN[:count]
	t.free = t.free[:count]
	t.size, t.count = size, count
	return nil
}

func (st *state) setSize(taskID string, size int64) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("set size: %w", err)
	}
	switch {
	case size < 0:
		return fmt.Errorf("set size of task %s: negative size %d: %w", taskID, size, ErrInvalid)
	case t.size == size:
		return nil
	case t.size >= 0:
		return fmt.Errorf("set size of task %s: size is already %d, not %d: %w", taskID, t.size, size, ErrInvalid)
	}
	if err := t.fitCount(size); err != nil {
		return fmt.Errorf("set size of task %s: %s: %w", taskID, err, ErrInvalid)
	}
	return nil
}

func (st *state) publish(taskID string, n int, d digest.Digest) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("publish piece %d: %w", n, err)
	}
	if err := piece.ValidateDigest(d); err != nil {
		return fmt.Errorf("publish piece %d of task %s: %w: %w", n, taskID, err, ErrInvalid)
	}
	if n < 0 || n >= maxPieces || (t.count >= 0 && n >= t.count) {
		return fmt.Errorf("publish piece %d of task %s: out of range (%d pieces): %w", n, taskID, t.count, ErrInvalid)
	}
	if t.isPublished(n) {
		if t.digests[n] == d {
			return nil
		}
		return fmt.Errorf("publish piece %d of task %s: already published as %s: %w", n, taskID, t.digests[n], ErrInvalid)
	}
	if t.state != schedapi.TaskRunning {
		return fmt.Errorf("publish piece %d of task %s: task is %s: %w", n, taskID, t.state, ErrInvalid)
	}
	t.grow(n + 1)
	t.digests[n] = d
	t.pub.set(n)
	t.published++
	st.refresh(t, n)
	return nil
}

func (st *state) succeed(taskID string, size int64, content digest.Digest) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("succeed: %w", err)
	}
	if content != "" {
		if err := content.Validate(); err != nil {
			return fmt.Errorf("succeed task %s: content digest: %w: %w", taskID, err, ErrInvalid)
		}
	}
	switch {
	case size < 0:
		return fmt.Errorf("succeed task %s: negative size %d: %w", taskID, size, ErrInvalid)
	case t.size >= 0 && t.size != size:
		return fmt.Errorf("succeed task %s: size %d, expected %d: %w", taskID, size, t.size, ErrInvalid)
	case content != "" && t.content != "" && content != t.content:
		return fmt.Errorf("succeed task %s: content %s, expected %s: %w", taskID, content, t.content, ErrInvalid)
	case t.state == schedapi.TaskSucceeded:
		return nil
	case t.state != schedapi.TaskRunning:
		return fmt.Errorf("succeed task %s: task is %s: %w", taskID, t.state, ErrInvalid)
	}
	if count := piece.Count(size, t.pieceSize); t.published != count {
		return fmt.Errorf("succeed task %s: %d of %d pieces published: %w", taskID, t.published, count, ErrInvalid)
	}
	if t.size < 0 {
		if err := t.fitCount(size); err != nil {
			return fmt.Errorf("succeed task %s: %s: %w", taskID, err, ErrInvalid)
		}
	}
	if content != "" {
		t.content = content
	}
	st.setState(t, schedapi.TaskSucceeded)
	st.log.Info("task succeeded", zap.String("task", t.id), zap.Int64("size", size))
	return nil
}

func (st *state) fail(taskID string, cause error) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("fail: %w", err)
	}
	switch t.state {
	case schedapi.TaskFailed:
		return nil
	case schedapi.TaskSucceeded:
		return fmt.Errorf("fail task %s: task succeeded: %w", taskID, ErrInvalid)
	}
	t.err = "source fetch failed"
	if cause != nil {
		t.err = cause.Error()
	}
	if len(t.err) > maxErrorLen {
		t.err = t.err[:maxErrorLen] + "..."
	}
	t.failedAt = st.now()
	// Nothing of a failed task is worth fetching any more.
	for _, m := range t.members {
		for _, a := range m.inflight {
			st.endAssignment(a, false)
		}
	}
	st.setState(t, schedapi.TaskFailed)
	st.log.Warn("task failed", zap.String("task", t.id), zap.String("error", t.err))
	return nil
}

func (st *state) removeTask(taskID string) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	st.dropTask(t)
	st.log.Info("task removed", zap.String("task", t.id))
	return nil
}

// dropTask forgets t: its parked polls are answered ErrTaskNotFound, its
// members leave and the slots their assignments held are freed.
func (st *state) dropTask(t *task) {
	for _, w := range t.waiters {
		w.answer(schedapi.PiecesResponse{}, fmt.Errorf("task %s: %w", t.id, ErrTaskNotFound))
	}
	t.waiters = nil
	for _, m := range t.members {
		st.dropMember(m)
	}
	st.m.taskState(t.state, "")
	delete(st.tasks, t.id)
}

func (st *state) taskInfo(taskID string) (schedapi.TaskInfo, error) {
	t, err := st.task(taskID)
	if err != nil {
		return schedapi.TaskInfo{}, err
	}
	return t.info(), nil
}

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
		p = &peer{id: id, tasks: make(map[string]*member)}
		st.peers[id] = p
	}
	if addr != "" {
		p.addr = addr
	}
	p.lastSeen = st.now()
	return p
}

func (st *state) admit(taskID, peerID string) error {
	if p := st.peers[peerID]; p != nil && p.tasks[taskID] == nil && len(p.tasks) >= st.cfg.MaxTasksPerPeer {
		return fmt.Errorf("admit %s: peer %s is in %d tasks (maxTasksPerPeer): %w", taskID, peerID, len(p.tasks), ErrLimit)
	}
	if t := st.tasks[taskID]; t == nil && len(st.tasks) >= st.cfg.MaxTasks {
		return fmt.Errorf("admit %s: %d tasks known (maxTasks): %w", taskID, len(st.tasks), ErrLimit)
	}
	return nil
}

func (st *state) join(taskID string, sp schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error) {
	if err := st.checkPeer(sp); err != nil {
		return schedapi.TaskInfo{}, fmt.Errorf("join: %w", err)
	}
	t, err := st.task(taskID)
	if err != nil {
		return schedapi.TaskInfo{}, fmt.Errorf("join: %w", err)
	}
	if p := st.peers[sp.ID]; p != nil && p.tasks[taskID] == nil && len(p.tasks) >= st.cfg.MaxTasksPerPeer {
		st.log.Warn("join refused: peer in too many tasks", zap.String("task", taskID), zap.String("peer", sp.ID),
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

func (st *state) leave(taskID, peerID string) error {
	_, m, err := st.member(taskID, peerID)
	if err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	st.dropMember(m)
	return nil
}

// startAssignment records that to fetches piece i from from (nil: the CDN).
//
// Its deadline is the time a transfer of the piece at MinPieceRate takes
// (Config.transferTimeout). A CDN assignment, when the CDN reports starts,
// must also start within CDNStartGrace; its deadline then counts from the
// start.
func (st *state) startAssignment(t *task, to *member, i int, from *member) *assignment {
	_, n := piece.Bounds(i, t.size, t.pieceSize)
	now := st.now()
	a := &assignment{task: t, piece: i, to: to, from: from, length: n, started: true,
		deadline: now.Add(st.cfg.transferTimeout(n, to.rate))}
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
		st.takeCDN(t, i, 1)
	} else {
		from.serving[a] = struct{}{}
		st.addUploads(from.peer, 1)
	}
	st.assignments++
	st.m.assigned(from == nil)
	return a
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
			st.takeCDN(t, a.piece, -1)
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
		st.takeCDN(a.task, a.piece, -1)
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
	if !st.tryAnswer(w) {
		w.parked = true
		m.peer.polling++
		m.waiting++
		t.waiters = append(t.waiters, w)
	}
}

// tryAnswer answers w if it has assignments, if its task changed state since
// it arrived or failed, or if its peer holds all of a succeeded task.
func (st *state) tryAnswer(w *waiter) bool {
	t, m := w.t, w.m
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

func (st *state) report(taskID, peerID string, results []schedapi.PieceResult) error {
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
		zap.String("task", t.id), zap.String("peer", src.peer.id), zap.Int("piece", i),
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
		st.log.Info("corrupt report contradicted", zap.String("task", t.id), zap.String("reporter", m.peer.id),
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
	st.log.Info("corrupt report", zap.String("task", t.id), zap.String("reporter", m.peer.id),
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
			st.log.Info("corrupt report contradicted", zap.String("task", t.id), zap.String("reporter", id),
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
	st.log.Warn("peer barred from task", zap.String("task", t.id), zap.String("peer", id), zap.String("reason", why),
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

// started records that the CDN began sending bytes [off, off+n) of a task
// to peerID: its CDN assignments of the pieces in that range are started,
// and their deadline counts from now.
func (st *state) started(taskID, peerID string, off, n int64) {
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
		a.deadline = now.Add(st.cfg.transferTimeout(a.length, m.rate))
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
			st.takeCDN(t, a.piece, 1)
		}
	}
}

func (st *state) heartbeat(peerID, addr string, tasks []string) ([]string, error) {
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
	var unknown []string
	for _, id := range tasks {
		if p == nil || p.tasks[id] == nil {
			unknown = append(unknown, id)
		}
	}
	return unknown, nil
}

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
					st.log.Debug("CDN assignment not started", zap.String("task", t.id), zap.String("peer", m.peer.id), zap.Int("piece", a.piece))
				case !now.Before(a.deadline):
					st.log.Debug("assignment timed out", zap.String("task", t.id), zap.String("peer", m.peer.id), zap.Int("piece", a.piece))
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
		st.log.Info("idle task forgotten", zap.String("task", t.id), zap.Time("emptySince", t.emptySince))
		if st.forgotten != nil {
			st.forgotten(t.id)
		}
	}
}
