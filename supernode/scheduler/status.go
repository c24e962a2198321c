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
	// Struck is true when the peer is no longer a source in the task.
	Struck bool
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
