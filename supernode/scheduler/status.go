package scheduler

// What the admin API and the task owner read: tasks, their members and
// peers, as snapshots taken on the event loop.

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// PeerState is one peer in one task, for the admin API.
type PeerState struct {
	ID, Addr string
	// Pieces is how many pieces the peer holds.
	Pieces int
	// Struck is true when the peer is no longer a source in the task;
	// Strikes counts the failures held against it as a source.
	Struck  bool
	Strikes int
	// Uploading is how many of the task's pieces the peer serves now.
	Uploading int
	// DownloadRate is what the peer reported when it joined (0: unknown).
	DownloadRate int64
	LastSeen     time.Time
}

// TaskStatus is a task as the admin API shows it.
type TaskStatus struct {
	schedapi.TaskInfo
	// ID is the task's ID, TaskInfo.TaskID as the owner carries it.
	ID taskid.ID
	// URL is the source, without credentials.
	URL string
	// Published is how many pieces the CDN has published.
	Published int
	// Peers are the task's members, by ID.
	Peers []PeerState
	// BytesFromCDN and BytesFromPeers add up the Bytes of OK piece results,
	// by whether the source was the CDN or a peer.
	BytesFromCDN, BytesFromPeers int64
	// CDNFanout is how many requesters the CDN may send one piece to at
	// once in this task now (1: super-seeding).
	CDNFanout int
	CreatedAt time.Time
}

// PeerStatus is a peer as the admin API shows it.
type PeerStatus struct {
	ID, Addr string
	// Tasks are the IDs of the tasks the peer is in, sorted.
	Tasks    []string
	LastSeen time.Time
}

func (t *task) status() TaskStatus {
	ts := TaskStatus{
		TaskInfo:       t.info(),
		ID:             t.id,
		URL:            t.url,
		Published:      t.published,
		BytesFromCDN:   t.bytesFromCDN,
		BytesFromPeers: t.bytesFromPeers,
		CDNFanout:      t.fanout,
		CreatedAt:      t.createdAt,
		Peers:          make([]PeerState, 0, len(t.members)),
	}
	for _, m := range t.members {
		ts.Peers = append(ts.Peers, PeerState{
			ID:           m.peer.id,
			Addr:         m.peer.addr,
			Pieces:       m.have.Len(),
			Struck:       t.isStruck(m.peer.id),
			Strikes:      t.strikes[m.peer.id].failures,
			Uploading:    len(m.serving),
			DownloadRate: m.rate,
			LastSeen:     m.peer.lastSeen,
		})
	}
	slices.SortFunc(ts.Peers, func(a, b PeerState) int { return strings.Compare(a.ID, b.ID) })
	return ts
}

// Tasks returns every task, by ID.
func (s *Scheduler) Tasks(ctx context.Context) ([]TaskStatus, error) {
	return do(ctx, s, func() ([]TaskStatus, error) {
		out := make([]TaskStatus, 0, len(s.st.tasks))
		for _, t := range s.st.tasks {
			out = append(out, t.status())
		}
		slices.SortFunc(out, func(a, b TaskStatus) int { return strings.Compare(a.TaskID, b.TaskID) })
		return out, nil
	})
}

// Task returns one task.
func (s *Scheduler) Task(ctx context.Context, taskID taskid.ID) (TaskStatus, error) {
	return do(ctx, s, func() (TaskStatus, error) {
		t, err := s.st.task(taskID)
		if err != nil {
			return TaskStatus{}, err
		}
		return t.status(), nil
	})
}

// Members returns how many peers are members of the task (the CDN never
// evicts content a member is downloading: cdn.MemberCounter).
func (s *Scheduler) Members(ctx context.Context, taskID taskid.ID) (int, error) {
	t, err := s.Task(ctx, taskID)
	if err != nil {
		return 0, err
	}
	return len(t.Peers), nil
}

// Peers returns every known peer, by ID.
func (s *Scheduler) Peers(ctx context.Context) ([]PeerStatus, error) {
	return do(ctx, s, func() ([]PeerStatus, error) {
		out := make([]PeerStatus, 0, len(s.st.peers))
		for _, p := range s.st.peers {
			ps := PeerStatus{ID: p.id, Addr: p.addr, LastSeen: p.lastSeen, Tasks: make([]string, 0, len(p.tasks))}
			for id := range p.tasks {
				ps.Tasks = append(ps.Tasks, id.String())
			}
			slices.Sort(ps.Tasks)
			out = append(out, ps)
		}
		slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.ID, b.ID) })
		return out, nil
	})
}

// maxEdges bounds the sender/receiver pairs a task counts deliveries for.
const maxEdges = 4096

// edge is a sender and a receiver, by peer ID.
type edge struct{ from, to string }

// countDelivery records one piece delivered from one peer to another.
func (t *task) countDelivery(from, to string) {
	e := edge{from, to}
	if _, ok := t.delivered[e]; !ok && len(t.delivered) >= maxEdges {
		return
	}
	if t.delivered == nil {
		t.delivered = make(map[edge]int)
	}
	t.delivered[e]++
}

// Transfer is one piece in flight, for the dashboard.
type Transfer struct {
	Piece int
	// From is the source's peer ID (the CDN's peer ID when the CDN is the
	// source); To the requester's.
	From, To string
	// Started is false for a CDN transfer not reported started yet.
	Started bool
}

// Delivery counts the pieces one peer delivered to another.
type Delivery struct {
	From, To string
	Pieces   int
}

// MemberPieces is one member's piece map.
type MemberPieces struct {
	ID string
	// Held is a bitmap of the pieces the member holds: piece i is bit i%8
	// of byte i/8.
	Held []byte
}

// TaskDetail is one task with its piece maps and transfers, for the
// dashboard.
type TaskDetail struct {
	TaskStatus
	// CDNID is the CDN's peer ID; CDNHeld the bitmap of the pieces it has
	// published (the same layout as MemberPieces.Held).
	CDNID   string
	CDNHeld []byte
	// Members are the members' piece maps, by ID (as Peers).
	Members []MemberPieces
	// InFlight lists the assignments in flight, by piece then requester.
	InFlight []Transfer
	// Delivered counts the pieces delivered per sender and receiver, most
	// first.
	Delivered []Delivery
}

// bitmap turns b, over n pieces, into bytes (piece i: bit i%8 of byte i/8).
func bitmap(b bitset, n int) []byte {
	out := make([]byte, (n+7)/8)
	for i := range n {
		if b.has(i) {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return out
}

func (st *state) taskDetail(t *task) TaskDetail {
	d := TaskDetail{TaskStatus: t.status(), CDNID: st.cdn.ID}
	n := len(t.digests)
	d.CDNHeld = bitmap(t.pub, n)
	d.Members = make([]MemberPieces, 0, len(t.members))
	for _, m := range t.members {
		d.Members = append(d.Members, MemberPieces{ID: m.peer.id, Held: bitmap(m.held, n)})
		for _, a := range m.inflight {
			from := st.cdn.ID
			if a.from != nil {
				from = a.from.peer.id
			}
			d.InFlight = append(d.InFlight, Transfer{Piece: a.piece, From: from, To: m.peer.id, Started: a.started})
		}
	}
	slices.SortFunc(d.Members, func(a, b MemberPieces) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(d.InFlight, func(a, b Transfer) int {
		if a.Piece != b.Piece {
			return a.Piece - b.Piece
		}
		return strings.Compare(a.To, b.To)
	})
	for e, c := range t.delivered {
		d.Delivered = append(d.Delivered, Delivery{From: e.from, To: e.to, Pieces: c})
	}
	slices.SortFunc(d.Delivered, func(a, b Delivery) int {
		if a.Pieces != b.Pieces {
			return b.Pieces - a.Pieces
		}
		if c := strings.Compare(a.From, b.From); c != 0 {
			return c
		}
		return strings.Compare(a.To, b.To)
	})
	return d
}

// TaskDetail returns one task with its members' piece maps, its
// assignments in flight and its deliveries so far.
func (s *Scheduler) TaskDetail(ctx context.Context, taskID taskid.ID) (TaskDetail, error) {
	return do(ctx, s, func() (TaskDetail, error) {
		t, err := s.st.task(taskID)
		if err != nil {
			return TaskDetail{}, err
		}
		return s.st.taskDetail(t), nil
	})
}

// CDNSlots is the CDN's upload slots: taken and configured.
type CDNSlots struct {
	Busy, Total int
	// Assignments counts the assignments in flight over every task, from
	// the CDN and from peers.
	Assignments int
}

// CDNSlots returns how many of the CDN's upload slots are taken.
func (s *Scheduler) CDNSlots(ctx context.Context) (CDNSlots, error) {
	return do(ctx, s, func() (CDNSlots, error) {
		return CDNSlots{Busy: s.st.cdnBusy, Total: s.st.cfg.CDNUploadSlots, Assignments: s.st.assignments}, nil
	})
}
