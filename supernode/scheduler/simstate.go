package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// SimState is the scheduler's state and selection policy driven directly by
// one caller, with no goroutine, no ticker and a clock of the caller's: a
// seam for simulators (supernode/scheduler/simulate). Each method does what
// the event loop does for the same Scheduler method, then retries the parked
// polls (the loop's flush after every event). Expiry and assignment timeouts
// (the loop's sweep) are not run. Not safe for concurrent use.
type SimState struct {
	st *state
	// parked are the polls waiting for an answer, by peer.
	parked map[string]*waiter
	// onAnswer receives every answer to a parked poll.
	onAnswer func(peerID string, resp schedapi.PiecesResponse)
	// answered are the parked polls answered since the last flush.
	answered []*waiter
}

// NewSimState returns a scheduler state for cfg (defaults applied, then
// validated) with cdn as the CDN peer and now as the clock. onAnswer is
// called, during a later method call, with the answer to each poll that
// Poll parked.
func NewSimState(cfg Config, cdn schedapi.Peer, now func() time.Time, onAnswer func(peerID string, resp schedapi.PiecesResponse)) (*SimState, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new sim state: %w", err)
	}
	pol, err := newPolicy(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("new sim state: %w", err)
	}
	m, err := newMetrics(nil)
	if err != nil {
		return nil, fmt.Errorf("new sim state: %w", err)
	}
	return &SimState{
		st:       newState(cfg, cdn, pol, now, zap.NewNop(), m),
		parked:   make(map[string]*waiter),
		onAnswer: onAnswer,
	}, nil
}

// after runs the loop's flush and hands the answers of parked polls out.
func (s *SimState) after(err error) error {
	s.st.flush()
	if len(s.answered) == 0 {
		return err
	}
	// A deterministic order: by peer.
	slices.SortFunc(s.answered, func(a, b *waiter) int { return strings.Compare(a.peerID, b.peerID) })
	answered := s.answered
	s.answered = nil
	for _, w := range answered {
		delete(s.parked, w.peerID)
		r := <-w.reply
		if r.err == nil && s.onAnswer != nil {
			s.onAnswer(w.peerID, r.resp)
		}
	}
	clear(answered)
	if s.answered == nil {
		s.answered = answered[:0]
	}
	return err
}

// AddTask is Scheduler.AddTask.
func (s *SimState) AddTask(spec TaskSpec) error { return s.after(s.st.addTask(spec)) }

// PublishPiece is Scheduler.PublishPiece.
func (s *SimState) PublishPiece(taskID taskid.ID, n int, d digest.Digest) error {
	return s.after(s.st.publish(taskID, n, d))
}

// Succeed is Scheduler.Succeed.
func (s *SimState) Succeed(taskID taskid.ID, size int64, content digest.Digest) error {
	return s.after(s.st.succeed(taskID, size, content))
}

// Join is Scheduler.Join.
func (s *SimState) Join(taskID taskid.ID, p schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error) {
	info, err := s.st.join(taskID, p, have)
	return info, s.after(err)
}

// Report is Scheduler.Report.
func (s *SimState) Report(taskID taskid.ID, peerID string, results []schedapi.PieceResult) error {
	return s.after(s.st.report(taskID, peerID, results))
}

// Poll is Scheduler.Poll without the wait: it returns the answer and true
// when the poll is answered at once; otherwise the poll is parked and its
// answer goes to onAnswer later. A peer has at most one parked poll: a new
// Poll first answers the parked one empty (onAnswer is not called for it),
// as if its caller had stopped waiting.
func (s *SimState) Poll(taskID taskid.ID, peerID string, max int) (schedapi.PiecesResponse, bool, error) {
	if max <= 0 || max > schedapi.MaxAssignments {
		max = schedapi.MaxAssignments
	}
	if old := s.parked[peerID]; old != nil {
		delete(s.parked, peerID)
		old.notify = nil
		s.st.unpark(old)
		<-old.reply
	}
	w := newWaiter(taskID, peerID, max)
	s.st.poll(w)
	if w.answered {
		r := <-w.reply
		return r.resp, true, s.after(r.err)
	}
	w.notify = func(w *waiter) { s.answered = append(s.answered, w) }
	s.parked[peerID] = w
	return schedapi.PiecesResponse{}, false, s.after(nil)
}
