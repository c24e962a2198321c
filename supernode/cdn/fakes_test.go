package cdn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

var errNoTask = errors.New("fake: task not found")

// fakeTask is what the fake scheduler knows of a task.
type fakeTask struct {
	spec      scheduler.TaskSpec
	info      schedapi.TaskInfo
	pieces    map[int]digest.Digest
	setSize   bool
	succeeded bool
	// arriving lists the pieces said to arrive, in order (-1: none).
	arriving []int
}

// fakeSched records what the CDN tells the scheduler.
type fakeSched struct {
	mu      sync.Mutex
	tasks   map[taskid.ID]*fakeTask
	adds    int
	changed chan struct{} // closed and replaced on every change
	// members is what Members answers, by task ID.
	members map[taskid.ID]int
}

func newFakeSched() *fakeSched {
	return &fakeSched{tasks: make(map[taskid.ID]*fakeTask), changed: make(chan struct{}), members: make(map[taskid.ID]int)}
}

var _ MemberCounter = (*fakeSched)(nil)

// Members answers from s.members.
func (s *fakeSched) Members(ctx context.Context, id taskid.ID) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tasks[id]; !ok {
		return 0, errNoTask
	}
	return s.members[id], nil
}

func (s *fakeSched) setMembers(id taskid.ID, n int) {
	s.mu.Lock()
	s.members[id] = n
	s.mu.Unlock()
}

func (s *fakeSched) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeSched) TaskInfo(ctx context.Context, id taskid.ID) (schedapi.TaskInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return schedapi.TaskInfo{}, errNoTask
	}
	return t.info, nil
}

func (s *fakeSched) AddTask(ctx context.Context, spec scheduler.TaskSpec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tasks[spec.ID]; ok && t.info.State != schedapi.TaskFailed {
		return errors.New("fake: task exists")
	}
	s.adds++
	s.tasks[spec.ID] = &fakeTask{
		spec:   spec,
		pieces: make(map[int]digest.Digest),
		info: schedapi.TaskInfo{
			TaskID: spec.ID.String(), State: schedapi.TaskRunning, Size: spec.Size, PieceSize: spec.PieceSize,
			PieceCount: piece.Count(spec.Size, spec.PieceSize), ContentDigest: spec.ContentDigest.String(),
		},
	}
	s.notify()
	return nil
}

func (s *fakeSched) update(id taskid.ID, fn func(t *fakeTask) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return errNoTask
	}
	if err := fn(t); err != nil {
		return err
	}
	s.notify()
	return nil
}

func (s *fakeSched) SetSize(ctx context.Context, id taskid.ID, size int64) error {
	return s.update(id, func(t *fakeTask) error {
		t.setSize = true
		t.info.Size = size
		t.info.PieceCount = piece.Count(size, t.info.PieceSize)
		return nil
	})
}

// PieceArriving records the piece said to arrive (-1: none).
func (s *fakeSched) PieceArriving(ctx context.Context, id taskid.ID, n int) error {
	return s.update(id, func(t *fakeTask) error {
		t.arriving = append(t.arriving, n)
		return nil
	})
}

func (s *fakeSched) PublishPiece(ctx context.Context, id taskid.ID, n int, d digest.Digest) error {
	return s.update(id, func(t *fakeTask) error {
		if _, dup := t.pieces[n]; dup {
			return fmt.Errorf("fake: piece %d published twice", n)
		}
		if n < 0 || (t.info.PieceCount >= 0 && n >= t.info.PieceCount) {
			return fmt.Errorf("fake: piece %d out of range", n)
		}
		t.pieces[n] = d
		return nil
	})
}

func (s *fakeSched) Succeed(ctx context.Context, id taskid.ID, size int64, d digest.Digest) error {
	return s.update(id, func(t *fakeTask) error {
		t.succeeded = true
		t.info.State = schedapi.TaskSucceeded
		t.info.Size = size
		t.info.ContentDigest = d.String()
		return nil
	})
}

func (s *fakeSched) Fail(ctx context.Context, id taskid.ID, cause error) error {
	return s.update(id, func(t *fakeTask) error {
		t.info.State = schedapi.TaskFailed
		t.info.Error = cause.Error()
		return nil
	})
}

func (s *fakeSched) RemoveTask(ctx context.Context, id taskid.ID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tasks[id]; !ok {
		return errNoTask
	}
	delete(s.tasks, id)
	s.notify()
	return nil
}

// snapshot returns a copy of the task.
func (s *fakeSched) snapshot(id taskid.ID) (fakeTask, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return fakeTask{}, false
	}
	c := *t
	c.pieces = make(map[int]digest.Digest, len(t.pieces))
	for k, v := range t.pieces {
		c.pieces[k] = v
	}
	return c, true
}

// waitFor waits until cond holds on the task or the timeout passes.
func (s *fakeSched) waitFor(id taskid.ID, timeout time.Duration, cond func(t fakeTask) bool) (fakeTask, bool) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if t, ok := s.snapshot(id); ok && cond(t) {
			return t, true
		}
		select {
		case <-ch:
		case <-deadline:
			t, _ := s.snapshot(id)
			return t, false
		}
	}
}

func settled(t fakeTask) bool {
	return t.info.State == schedapi.TaskSucceeded || t.info.State == schedapi.TaskFailed
}

// httpSource is a minimal source.Client over net/http for these tests.
type httpSource struct{ client *http.Client }

func (h httpSource) Fetch(ctx context.Context, req source.Request) (*source.Response, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, req.URL, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range req.Header {
		r.Header[k] = v
	}
	resp, err := h.client.Do(r)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("fetch: %w", source.ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		resp.Body.Close()
		return nil, &source.StatusError{URL: req.URL, StatusCode: resp.StatusCode}
	}
	return &source.Response{Body: resp.Body, Size: resp.ContentLength}, nil
}
