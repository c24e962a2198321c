//go:build !race

package cdn

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/piece"
)

// The figures of issue 12 at full size: a cold 256 MiB blob from an origin
// sending 20 MiB/s per connection. Too heavy for the race detector; skipped
// with -short.
func TestDemandLargeBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB at 20 MiB/s")
	}
	t.Parallel()
	const size, rate = 256 * mib, 20 * mib
	ps := piece.SizeFor(size)
	count := piece.Count(size, ps)

	t.Run("piece at 200 MiB", func(t *testing.T) {
		t.Parallel()
		body := blob(140, size)
		o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: rate})
		f := newDemandFixture(t, o)
		began := time.Now()
		id := f.start(t, "/blob")
		want := int((200 * mib) / ps)
		f.cdn.Demand(id, []int{want})
		_, ok := f.sched.waitFor(id, 60*time.Second, func(t fakeTask) bool { _, ok := t.pieces[want]; return ok })
		require.True(t, ok)
		took := time.Since(began)
		f.done(t, id, body)
		all := time.Since(began)
		sequential := time.Duration(float64(int64(want+1)*ps) / rate * float64(time.Second))
		t.Logf("piece %d (at 200 MiB) published after %s (the stream alone: about %s); all %d pieces after %s; origin sent %.4f copies",
			want, took, sequential, count, all, f.copies(size))
		require.Less(t, took, sequential/4)
		require.LessOrEqual(t, f.copies(size), 1.05)
	})
	t.Run("four quarters", func(t *testing.T) {
		t.Parallel()
		body := blob(141, size)
		o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: rate})
		f := newDemandFixture(t, o)
		began := time.Now()
		id := f.start(t, "/blob")
		q := count / 4
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var ps []int
				for n := i * q; n < (i+1)*q; n++ {
					ps = append(ps, n)
				}
				f.cdn.Demand(id, ps)
			}()
		}
		wg.Wait()
		f.done(t, id, body)
		t.Logf("four quarters of %d pieces done after %s (the stream alone: about %s); origin sent %.4f copies; ranges %q",
			count, time.Since(began), time.Duration(float64(size)/rate*float64(time.Second)), f.copies(size), o.rangesSeen())
		require.LessOrEqual(t, f.copies(size), 1.05)
	})
}
