package peer

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// A reader of the whole content that lags a download the supernode's CDN
// holds in full paces it: the download stops once the pieces from the
// reader on fill the piece cache but for one, resumes as the reader reads,
// and the reader gets every byte; a slower reader of the same download
// holds no one back. While the task is still running at the
// supernode (its CDN may not have the pieces yet), or with no reader, the
// download runs ahead as before.
func TestLaggingReaderPacesDownload(t *testing.T) {
	t.Parallel()
	const pieces = 24
	data := randomData(t, pieces*testPieceSize+10)
	setup := func(t *testing.T, succeeded bool, stale time.Duration) (*Engine, *Download) {
		h := newHolder(t, "good", data, good)
		f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
		f.succeeded = succeeded
		e := newTestEngine(t, f.addr, engineSetup{cfg: Config{Concurrency: 2}})
		e.pcache.max = 4 * testPieceSize // the download may run 3 pieces ahead
		e.paceStale = stale
		d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
		require.NoError(t, err)
		t.Cleanup(func() { d.Close() })
		return e, d
	}

	t.Run("paced", func(t *testing.T) {
		t.Parallel()
		_, d := setup(t, true, paceStale)
		r := d.NewReader(0)
		defer r.Close()
		require.Eventually(t, func() bool { return d.Progress().Completed >= 3*testPieceSize }, 5*time.Second, 5*time.Millisecond)
		time.Sleep(300 * time.Millisecond) // time to run further ahead, were it not paced
		// Three pieces, and what the two fetches in flight when the third
		// was asked for bring.
		require.LessOrEqual(t, d.Progress().Completed, int64(5*testPieceSize), "the download waits for the reader")
		got, err := io.ReadAll(&slowReader{r: r, step: testPieceSize / 2, pause: time.Millisecond})
		require.NoError(t, err)
		require.Equal(t, data, got)
		require.Equal(t, int64(len(data)), d.Progress().Completed)
	})
	t.Run("a reader that stops reading stops pacing", func(t *testing.T) {
		t.Parallel()
		_, d := setup(t, true, time.Second)
		r := d.NewReader(0)
		defer r.Close()
		start := time.Now()
		require.Eventually(t, func() bool { return d.Progress().Completed >= 3*testPieceSize }, 5*time.Second, 5*time.Millisecond)
		require.Less(t, d.Progress().Completed, int64(len(data)), "paced at first")
		require.Eventually(t, func() bool { return d.Progress().Completed == int64(len(data)) }, 5*time.Second, 5*time.Millisecond,
			"a reader still for paceStale paces nothing")
		require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "not before paceStale")
		got, err := io.ReadAll(r)
		require.NoError(t, err)
		require.Equal(t, data, got)
	})
	t.Run("a slower reader holds no one back", func(t *testing.T) {
		t.Parallel()
		_, d := setup(t, true, paceStale)
		idle := d.NewReader(0) // opened, never read: not stale for 10 s
		defer idle.Close()
		r := d.NewReader(0)
		defer r.Close()
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(r)
			got <- b
		}()
		select {
		case b := <-got:
			require.Equal(t, data, b)
		case <-time.After(5 * time.Second):
			t.Fatal("the reader that reads waited for the one that does not")
		}
	})
	t.Run("running at the supernode", func(t *testing.T) {
		t.Parallel()
		_, d := setup(t, false, paceStale)
		r := d.NewReader(0)
		defer r.Close()
		require.Eventually(t, func() bool { return d.Progress().Completed == int64(len(data)) }, 5*time.Second, 5*time.Millisecond,
			"the CDN may not hold the pieces yet: the reader paces nothing")
	})
	t.Run("no reader", func(t *testing.T) {
		t.Parallel()
		_, d := setup(t, true, paceStale)
		require.Eventually(t, func() bool { return d.Progress().Completed == int64(len(data)) }, 5*time.Second, 5*time.Millisecond)
	})
}

// slowReader reads at most step bytes at a time, pausing between reads.
type slowReader struct {
	r     io.Reader
	step  int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), s.step)])
}
