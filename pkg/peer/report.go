package peer

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/backoff"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// reporter sends piece results to the supernode as soon as they come: an
// assignment holds an upload slot of its source until it is reported, so a
// result that waits keeps that slot from the next requester. Results that
// arrive while a report is on its way go together in the next one.
type reporter struct {
	t    *task
	in   chan schedapi.PieceResult
	done chan struct{}
	once sync.Once
}

func newReporter(t *task) *reporter {
	return &reporter{t: t, in: make(chan schedapi.PieceResult, 2*schedapi.MaxAssignments), done: make(chan struct{})}
}

func (r *reporter) add(ctx context.Context, res schedapi.PieceResult) {
	select {
	case r.in <- res:
	case <-ctx.Done():
	}
}

// close flushes what is pending and waits for the reporter to stop.
func (r *reporter) close() {
	r.once.Do(func() { close(r.in) })
	<-r.done
}

func (r *reporter) run(ctx context.Context) {
	defer close(r.done)
	pending := make([]schedapi.PieceResult, 0, reportBatch)
	bo := backoff.Backoff{Min: reportRetryMin, Max: reportRetryMax}
	for res := range r.in {
		pending = append(pending[:0], res)
		open := true
	drain: // whatever queued up while the last report was on its way
		for open && len(pending) < reportBatch {
			select {
			case res, ok := <-r.in:
				if !ok {
					open = false
					break drain
				}
				pending = append(pending, res)
			default:
				break drain
			}
		}
		if ctx.Err() == nil {
			if err := r.t.e.sched.Report(ctx, r.t.id, r.t.e.self.ID, pending); err != nil {
				r.t.log.Debug("report", zap.Int("results", len(pending)), zap.Error(err))
				// Results arriving meanwhile queue up for the next one.
				pause := time.NewTimer(bo.Next())
				select {
				case <-ctx.Done():
				case <-pause.C:
				}
				pause.Stop()
			} else {
				bo.Reset()
			}
		}
		if !open {
			return
		}
	}
}
