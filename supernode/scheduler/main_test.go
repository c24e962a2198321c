package scheduler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// cdnPeer is the supernode's upload listener in every test.
var cdnPeer = schedapi.Peer{ID: "supernode", Addr: "127.0.0.1:8002"}

// testTaskID returns a valid task ID derived from name.
func testTaskID(name string) taskid.ID {
	sum := sha256.Sum256([]byte(name))
	return taskid.ID(hex.EncodeToString(sum[:]))
}

// pieceDigest is the digest the tests publish for piece i of a task.
func pieceDigest(task taskid.ID, i int) digest.Digest {
	return piece.Digest(fmt.Appendf(nil, "%s/%d", task, i))
}

func peerAt(id string, port int) schedapi.Peer {
	return schedapi.Peer{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", port)}
}

// fakeClock is a settable clock for WithClock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newTestState returns a bare state, for tests that drive it without the
// event loop.
func newTestState(t *testing.T, cfg Config) *state {
	t.Helper()
	cfg = cfg.ApplyDefaults()
	require.NoError(t, cfg.Validate())
	p, err := newPolicy(cfg.Policy)
	require.NoError(t, err)
	m, err := newMetrics(nil)
	require.NoError(t, err)
	clock := newFakeClock()
	return newState(cfg, cdnPeer, p, clock.Now, zap.NewNop(), m)
}

// startScheduler builds a scheduler and runs it until the test ends.
func startScheduler(t testing.TB, cfg Config, opts ...Option) *Scheduler {
	t.Helper()
	s, err := New(cfg, cdnPeer, opts...)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return s
}

// parked returns how many polls are parked on a task.
func (s *Scheduler) parked(ctx context.Context, taskID taskid.ID) (int, error) {
	return do(ctx, s, func() (int, error) {
		t, err := s.st.task(taskID)
		if err != nil {
			return 0, err
		}
		return len(t.waiters), nil
	})
}

// waitParked waits until n polls are parked on a task.
func waitParked(t *testing.T, s *Scheduler, taskID taskid.ID, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		got, err := s.parked(t.Context(), taskID)
		return err == nil && got == n
	}, 5*time.Second, time.Millisecond, "waiting for %d parked polls", n)
}
