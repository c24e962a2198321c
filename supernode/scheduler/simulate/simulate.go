// This file is one piece on purpose: the event loop and the bandwidth
// model it recomputes at each event are one state machine.

// Package simulate is a discrete-event simulator of one task distributed to
// a swarm of virtual peers, driven by the real scheduler state and selection
// policy (scheduler.SimState). Nothing runs on sockets or goroutines: time is
// virtual and every transfer is a fluid flow whose rate the bandwidth model
// recomputes at each event.
//
// The model:
//   - the origin feeds the CDN at OriginRate, piece after piece; each piece
//     is published to the scheduler when it is stored, and the task succeeds
//     after the last one;
//   - every peer joins at time zero and keeps up to Concurrency pieces in
//     flight: whenever it has a free slot and no poll out, it polls the
//     scheduler for as many assignments as it has free slots; a poll that
//     gets nothing waits (parked, as in the real scheduler) until a change
//     lets the scheduler answer it;
//   - a poll, a report and an answer each take Latency to arrive; a
//     transfer's first byte arrives a round trip (2 x Latency) after its
//     assignment;
//   - a transfer's rate is min(source upload / source's active uploads,
//     sink download / sink's active downloads), recomputed for every
//     transfer of the source and of the sink whenever a transfer starts or
//     ends. Bandwidth one transfer cannot use is not redistributed (no
//     max-min fairness), so the model errs on the slow side;
//   - the CDN uploads at CDNUpload shared the same way (its slot count is
//     the scheduler's CDNUploadSlots); TCP dynamics, protocol overhead,
//     disk, CPU, failures, peer churn and the scheduler's own run time are
//     not modelled, nor are expiry and assignment timeouts.
package simulate

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// Scenario is one task sent to a swarm. Sizes are in bytes, rates in bytes
// per second.
type Scenario struct {
	// Size of the task.
	Size int64
	// PieceSize; 0 picks piece.SizeFor(Size), as the supernode does.
	PieceSize int64
	// Peers is the number of downloading peers.
	Peers int
	// PeerUpload and PeerDownload are every peer's rate limits.
	PeerUpload, PeerDownload float64
	// CDNUpload is the supernode's upload rate, OriginRate the rate at
	// which the origin feeds the CDN.
	CDNUpload, OriginRate float64
	// Concurrency is the number of pieces a peer keeps in flight; 0 means 8.
	Concurrency int
	// Latency is the one-way latency between any two nodes: a poll or a
	// report reaches the scheduler, an answer reaches its peer, one latency
	// after it was sent, and a transfer's first byte arrives a round trip
	// after its assignment did.
	Latency time.Duration
	// Scheduler configures the scheduler under test (defaults applied).
	Scheduler scheduler.Config
	// MaxEvents bounds the run; 0 means 50 times the transfers needed.
	MaxEvents int
}

// Result is what a run measured. Durations are simulated time except Wall.
type Result struct {
	Peers, Pieces int
	PieceSize     int64
	// P50, P90, P99 and Max are the completion times of the peers (nearest
	// rank), Ideal is Size / PeerDownload.
	P50, P90, P99, Max, Ideal time.Duration
	// StartP99 is the time by which 99 % of the peers had their first
	// transfer under way: the swarm's start-up.
	StartP99 time.Duration
	// OriginBytes, CDNBytes and PeerBytes are the bytes the origin, the
	// CDN and the peers uploaded.
	OriginBytes, CDNBytes, PeerBytes int64
	// Transfers is the number of piece transfers, Events the number of
	// events processed.
	Transfers, Events int
	// SimTime is the simulated time at which the last peer completed,
	// Wall the real time the run took.
	SimTime, Wall time.Duration
}

const cdnID = "cdn"

// taskID is the simulated task's ID (any 64 lowercase hex digits will do).
const taskID = "8bb2b8a4e6a4c15d83bb2d3d94ab0b95e6ff5a6c6e88b8a0d4a1f3cd1e2b5a71"

// eps absorbs float rounding when a transfer's remaining bytes are checked.
const eps = 1e-6

type node struct {
	idx      int
	id       string
	up, down float64
	uploads  []*transfer
	// downloads are the transfers this node receives.
	downloads []*transfer
	// pending counts the assignments received whose transfer has not
	// started yet.
	pending int
	have    int
	done    bool
	doneAt  float64
	// startAt is when the node's first transfer started, -1 before.
	startAt float64
	// polling is set while the node's poll is on its way, parked in the
	// scheduler, or its answer on the way back.
	polling bool
}

type transfer struct {
	piece     int
	length    int64
	from, to  *node
	remaining float64
	rate      float64
	last      float64
	// done is the transfer's completion event, kept in the queue and moved
	// whenever the transfer is re-rated.
	done *event
}

// Event kinds.
const (
	evPublish  = iota // the origin delivered piece to the CDN
	evComplete        // transfer x delivered its last byte
	evPoll            // n's poll reaches the scheduler
	evAnswer          // an answer (as) reaches n
	evStart           // the first byte of assignment a reaches n
	evReport          // n's report of res reaches the scheduler
)

type event struct {
	at   float64
	seq  int
	kind int
	// idx is the event's place in the queue.
	idx   int
	piece int
	n     *node
	x     *transfer
	as    []schedapi.Assignment
	a     schedapi.Assignment
	res   schedapi.PieceResult
}

// queue is a binary heap of events by time, then by scheduling order; an
// event knows its place so that it can be moved.
type queue []*event

func (q queue) less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}

func (q queue) swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].idx, q[j].idx = i, j
}

func (q queue) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			return
		}
		q.swap(i, p)
		i = p
	}
}

func (q queue) down(i int) bool {
	start := i
	for {
		l := 2*i + 1
		if l >= len(q) {
			break
		}
		c := l
		if r := l + 1; r < len(q) && q.less(r, l) {
			c = r
		}
		if !q.less(c, i) {
			break
		}
		q.swap(i, c)
		i = c
	}
	return i > start
}

func (q *queue) add(e *event) {
	e.idx = len(*q)
	*q = append(*q, e)
	q.up(e.idx)
}

func (q *queue) next() *event {
	old := *q
	e := old[0]
	last := len(old) - 1
	old.swap(0, last)
	old[last] = nil
	*q = old[:last]
	q.down(0)
	e.idx = -1
	return e
}

// move re-sorts e after its time changed.
func (q queue) move(e *event) {
	if !q.down(e.idx) {
		q.up(e.idx)
	}
}

func (q queue) empty() bool { return len(q) == 0 }

// push schedules e at its time, after every event already scheduled for
// that time.
func (r *sim) push(e *event) {
	r.seq++
	e.seq = r.seq
	r.q.add(e)
}

type sim struct {
	sc        Scenario
	st        *scheduler.SimState
	now       float64
	base      time.Time
	q         queue
	seq       int
	cdn       *node
	peers     []*node
	byID      map[string]*node
	count     int
	pieceSize int64
	// lat is the one-way latency in seconds.
	lat  float64
	res  Result
	left int
}

// Run simulates sc and returns what it measured.
func Run(sc Scenario) (Result, error) {
	start := time.Now()
	if sc.Size <= 0 || sc.Peers <= 0 || sc.PeerUpload <= 0 || sc.PeerDownload <= 0 || sc.CDNUpload <= 0 || sc.OriginRate <= 0 {
		return Result{}, errors.New("simulate: size, peers and every rate must be positive")
	}
	if sc.Concurrency <= 0 {
		sc.Concurrency = 8
	}
	if sc.PieceSize <= 0 {
		sc.PieceSize = piece.SizeFor(sc.Size)
	}
	r := &sim{sc: sc, base: time.Unix(0, 0), byID: make(map[string]*node), pieceSize: sc.PieceSize, lat: sc.Latency.Seconds()}
	r.count = piece.Count(sc.Size, sc.PieceSize)
	if sc.MaxEvents <= 0 {
		sc.MaxEvents = 50 * (sc.Peers + 1) * (r.count + 1)
	}
	st, err := scheduler.NewSimState(sc.Scheduler, schedapi.Peer{ID: cdnID, Addr: "10.255.255.254:65001"},
		func() time.Time { return r.base.Add(time.Duration(r.now * float64(time.Second))) },
		func(peerID string, resp schedapi.PiecesResponse) {
			// A parked poll was answered: the answer travels back.
			r.push(&event{at: r.now + r.lat, kind: evAnswer, n: r.byID[peerID], as: resp.Assignments})
		})
	if err != nil {
		return Result{}, fmt.Errorf("simulate: %w", err)
	}
	r.st = st
	if err := st.AddTask(scheduler.TaskSpec{ID: taskID, URL: "http://origin.invalid/blob", PieceSize: sc.PieceSize, Size: sc.Size}); err != nil {
		return Result{}, fmt.Errorf("simulate: %w", err)
	}
	r.cdn = &node{idx: -1, id: cdnID, up: sc.CDNUpload, down: math.Inf(1)}
	r.byID[cdnID] = r.cdn
	for i := range sc.Peers {
		n := &node{idx: i, id: fmt.Sprintf("peer-%05d", i), up: sc.PeerUpload, down: sc.PeerDownload, startAt: -1}
		r.peers = append(r.peers, n)
		r.byID[n.id] = n
		addr := fmt.Sprintf("10.%d.%d.%d:65001", i>>16&0xff, i>>8&0xff, i&0xff)
		// Peers report their download limit, as dfdaemons with
		// rateLimit.download do; the scheduler uses it only when it also
		// knows the CDN's rate (Scheduler.CDNUploadRate).
		if _, err := st.Join(taskID, schedapi.Peer{ID: n.id, Addr: addr, DownloadRate: int64(sc.PeerDownload)}, nil); err != nil {
			return Result{}, fmt.Errorf("simulate: %w", err)
		}
	}
	r.left = sc.Peers
	// The origin feeds the CDN piece after piece.
	for i := range r.count {
		off, n := piece.Bounds(i, sc.Size, sc.PieceSize)
		r.push(&event{at: float64(off+n) / sc.OriginRate, kind: evPublish, piece: i})
	}
	r.res.OriginBytes = sc.Size
	// Every peer polls at once; its poll reaches the scheduler one
	// latency later.
	for _, n := range r.peers {
		r.poll(n)
	}
	for r.left > 0 {
		if r.q.empty() {
			return Result{}, fmt.Errorf("simulate: stalled at %.3fs with %d peers incomplete", r.now, r.left)
		}
		if r.res.Events >= sc.MaxEvents {
			return Result{}, fmt.Errorf("simulate: more than %d events", sc.MaxEvents)
		}
		e := r.q.next()
		r.res.Events++
		r.now = e.at
		switch e.kind {
		case evPublish:
			err = r.publish(e.piece)
		case evComplete:
			err = r.complete(e.x)
		case evPoll:
			err = r.arrive(e.n)
		case evAnswer:
			err = r.answer(e.n, e.as)
		case evStart:
			err = r.start(e.n, e.a)
		case evReport:
			if err = r.st.Report(taskID, e.n.id, []schedapi.PieceResult{e.res}); err != nil {
				err = fmt.Errorf("simulate: report of %s: %w", e.n.id, err)
			}
		}
		if err != nil {
			return Result{}, err
		}
	}
	r.finish(start)
	return r.res, nil
}

func (r *sim) publish(i int) error {
	if err := r.st.PublishPiece(taskID, i, digest.FromString(fmt.Sprintf("piece %d", i))); err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	if i == r.count-1 {
		if err := r.st.Succeed(taskID, r.sc.Size, ""); err != nil {
			return fmt.Errorf("simulate: %w", err)
		}
	}
	return nil
}

// poll sends n's poll for its free download slots, unless it has one out
// already, is done, or has no free slot.
func (r *sim) poll(n *node) {
	if n.done || n.polling || r.sc.Concurrency-len(n.downloads)-n.pending <= 0 {
		return
	}
	n.polling = true
	r.push(&event{at: r.now + r.lat, kind: evPoll, n: n})
}

// arrive has the scheduler take n's poll: answered at once, the answer
// travels back; otherwise it is parked until a change answers it.
func (r *sim) arrive(n *node) error {
	free := r.sc.Concurrency - len(n.downloads) - n.pending
	if n.done || free <= 0 {
		n.polling = false
		return nil
	}
	resp, ok, err := r.st.Poll(taskID, n.id, free)
	if err != nil {
		return fmt.Errorf("simulate: poll of %s: %w", n.id, err)
	}
	if ok {
		r.push(&event{at: r.now + r.lat, kind: evAnswer, n: n, as: resp.Assignments})
	}
	return nil
}

// answer hands n its assignments: each transfer starts a round trip later
// (the request to the source, the first byte back), and n polls again for
// what slots it has left.
func (r *sim) answer(n *node, as []schedapi.Assignment) error {
	n.polling = false
	for _, a := range as {
		src := r.byID[a.From.ID]
		if src == nil || src == n {
			return fmt.Errorf("simulate: %s assigned piece %d from %q", n.id, a.Piece, a.From.ID)
		}
		n.pending++
		if r.lat == 0 {
			if err := r.start(n, a); err != nil {
				return err
			}
			continue
		}
		r.push(&event{at: r.now + 2*r.lat, kind: evStart, n: n, a: a})
	}
	r.poll(n)
	return nil
}

// start begins the transfer of assignment a to n.
func (r *sim) start(n *node, a schedapi.Assignment) error {
	n.pending--
	if n.startAt < 0 {
		n.startAt = r.now
	}
	src := r.byID[a.From.ID]
	x := &transfer{piece: a.Piece, length: a.Length, from: src, to: n, remaining: float64(a.Length), last: r.now}
	affected := r.settle(src, n)
	src.uploads = append(src.uploads, x)
	n.downloads = append(n.downloads, x)
	r.rerate(append(affected, x))
	r.res.Transfers++
	return nil
}

// settle brings the progress of every transfer of a and b up to now and
// returns them.
func (r *sim) settle(a, b *node) []*transfer {
	out := make([]*transfer, 0, len(a.uploads)+len(b.downloads)+1)
	for _, x := range a.uploads {
		x.remaining -= x.rate * (r.now - x.last)
		x.last = r.now
		out = append(out, x)
	}
	for _, x := range b.downloads {
		if x.from == a {
			continue // already among a's uploads
		}
		x.remaining -= x.rate * (r.now - x.last)
		x.last = r.now
		out = append(out, x)
	}
	return out
}

// rerate recomputes the rate of each transfer and moves its completion.
func (r *sim) rerate(xs []*transfer) {
	for _, x := range xs {
		x.rate = min(x.from.up/float64(len(x.from.uploads)), x.to.down/float64(len(x.to.downloads)))
		at := r.now + max(x.remaining, 0)/x.rate
		if x.done == nil {
			x.done = &event{kind: evComplete, x: x}
			x.done.at = at
			r.push(x.done)
			continue
		}
		r.seq++
		x.done.at, x.done.seq = at, r.seq
		r.q.move(x.done)
	}
}

// complete ends transfer x: n reports the piece, which reaches the
// scheduler one latency later, and polls for the freed slot.
func (r *sim) complete(x *transfer) error {
	src, n := x.from, x.to
	affected := r.settle(src, n)
	if x.remaining > eps*float64(x.length)+eps {
		return fmt.Errorf("simulate: transfer of piece %d to %s ended with %.0f bytes left", x.piece, n.id, x.remaining)
	}
	src.uploads = remove(src.uploads, x)
	n.downloads = remove(n.downloads, x)
	affected = slices.DeleteFunc(affected, func(y *transfer) bool { return y == x })
	r.rerate(affected)
	if src == r.cdn {
		r.res.CDNBytes += x.length
	} else {
		r.res.PeerBytes += x.length
	}
	n.have++
	if n.have == r.count {
		n.done, n.doneAt = true, r.now
		r.left--
	}
	res := schedapi.PieceResult{Piece: x.piece, From: src.id, OK: true, Bytes: x.length}
	if r.lat == 0 {
		if err := r.st.Report(taskID, n.id, []schedapi.PieceResult{res}); err != nil {
			return fmt.Errorf("simulate: report of %s: %w", n.id, err)
		}
	} else {
		r.push(&event{at: r.now + r.lat, kind: evReport, n: n, res: res})
	}
	r.poll(n)
	return nil
}

func remove(xs []*transfer, x *transfer) []*transfer {
	i := slices.Index(xs, x)
	if i < 0 {
		return xs
	}
	xs[i] = xs[len(xs)-1]
	xs[len(xs)-1] = nil
	return xs[:len(xs)-1]
}

func (r *sim) finish(start time.Time) {
	times := make([]float64, 0, len(r.peers))
	starts := make([]float64, 0, len(r.peers))
	for _, n := range r.peers {
		times = append(times, n.doneAt)
		starts = append(starts, n.startAt)
	}
	slices.Sort(times)
	slices.Sort(starts)
	d := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	rankOf := func(xs []float64, p float64) float64 {
		i := int(math.Ceil(p*float64(len(xs)))) - 1
		return xs[max(i, 0)]
	}
	rank := func(p float64) float64 { return rankOf(times, p) }
	r.res.StartP99 = d(rankOf(starts, 0.99))
	r.res.Peers, r.res.Pieces, r.res.PieceSize = len(r.peers), r.count, r.pieceSize
	r.res.P50, r.res.P90, r.res.P99, r.res.Max = d(rank(0.50)), d(rank(0.90)), d(rank(0.99)), d(times[len(times)-1])
	r.res.Ideal = d(float64(r.sc.Size) / r.sc.PeerDownload)
	r.res.SimTime = d(r.now)
	r.res.Wall = time.Since(start)
}
