package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// liarMode is how a hostile peer answers the piece requests it gets.
type liarMode int

const (
	// liarCorrupt serves the right length of garbage.
	liarCorrupt liarMode = iota
	// liarShort announces and sends one byte less than asked.
	liarShort
	// liarEndless sends the right bytes, then keeps sending past the end
	// (no Content-Length).
	liarEndless
	// liarWrongPiece serves the real bytes of another piece.
	liarWrongPiece
	// liarMissing claims pieces, then answers 404 "range not available".
	liarMissing
	// liarSlowLoris promises the piece, then sends one byte a second.
	liarSlowLoris
)

// Hostile peers of every kind, each claiming pieces it never fetched: the
// honest dfgets catch each by digest, size or deadline, the liar is struck
// out of the task, and every honest download finishes with correct bytes.
func TestHostilePeers(t *testing.T) {
	skipShort(t)
	t.Parallel()
	tests := []struct {
		name string
		mode liarMode
		args []string
	}{
		{name: "corrupt bytes", mode: liarCorrupt},
		{name: "short body", mode: liarShort},
		{name: "endless body", mode: liarEndless},
		{name: "wrong piece", mode: liarWrongPiece},
		{name: "lies about pieces", mode: liarMissing},
		// The piece deadline catches the slow peer; short, so the row is quick.
		{name: "slow loris", mode: liarSlowLoris, args: []string{"--piece-timeout", "3s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const peers, size = 3, 20 * mib
			o := newOrigin(t, size, 10*mib)
			sn := startSupernode(t)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()

			url := o.url("hostile")
			l := startLiar(t, ctx, sn.addr, url, tt.mode, o.data)
			// Let the liar hold pieces before the honest peers arrive, so
			// they are sent to it.
			l.waitHolds(t, sn, 3)

			dir := t.TempDir()
			var ds []*dfget
			for i := range peers {
				args := append([]string{"--node", sn.addr, "--notbs"}, tt.args...)
				ds = append(ds, startDfget(t, ctx, url, filepath.Join(dir, fmt.Sprintf("out-%d", i)), args...))
			}
			for i, d := range ds {
				require.NoError(t, d.wait(t, 2*time.Minute), "peer %d stderr:\n%s", i, d.stderr.String())
				require.Equal(t, o.sum, fileSHA256(t, d.out), "peer %d", i)
			}
			require.Positive(t, l.served(), "the liar was never asked for a piece, so the test proved nothing")

			tasks := sn.tasks(t)
			require.Len(t, tasks, 1)
			struck := false
			for _, p := range tasks[0].Peers {
				if p.ID == l.id {
					struck = p.Struck
				}
			}
			require.True(t, struck, "the liar must be struck out of the task")
		})
	}
}

// liar is a hostile peer speaking the real peer protocol: it claims every
// piece it is assigned without fetching it and serves lies by mode.
type liar struct {
	id      string
	mode    liarMode
	data    []byte // the true content, for the wrong-piece mode
	claims  chan struct{}
	uploads chan struct{}
}

func (l *liar) claimed() int { return len(l.claims) }

// waitHolds waits until the supernode counts n pieces as the liar's. Its
// claims of pieces the CDN was still receiving (cut-through) count for
// nothing, so it holds pieces only once the CDN has published them.
func (l *liar) waitHolds(t *testing.T, sn *supernode, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, tk := range sn.tasks(t) {
			for _, p := range tk.Peers {
				if p.ID == l.id && p.Pieces >= n {
					return true
				}
			}
		}
		return false
	}, time.Minute, 20*time.Millisecond, "the liar holds %d pieces (it claimed %d)", n, l.claimed())
}
func (l *liar) served() int { return len(l.uploads) }

func startLiar(t *testing.T, ctx context.Context, node, url string, mode liarMode, data []byte) *liar {
	t.Helper()
	l := &liar{id: "liar", mode: mode, data: data, claims: make(chan struct{}, 1<<16), uploads: make(chan struct{}, 1<<16)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(l.serve), ReadHeaderTimeout: 5 * time.Second}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()

	sc, err := schedclient.New([]string{node}, schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	reg, err := sc.Register(ctx, schedapi.RegisterRequest{
		Peer: schedapi.Peer{ID: l.id, Addr: ln.Addr().String()},
		URL:  url,
	})
	require.NoError(t, err)

	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for ctx.Err() == nil {
			resp, err := sc.Pieces(ctx, taskid.ID(reg.TaskID), l.id, schedapi.MaxAssignments, time.Second, schedapi.NoWant)
			if err != nil {
				if errors.Is(err, schedclient.ErrPeerNotFound) || ctx.Err() != nil {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			var results []schedapi.PieceResult
			for _, a := range resp.Assignments {
				results = append(results, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, OK: true, Bytes: a.Length})
				l.claims <- struct{}{}
			}
			if len(results) > 0 {
				_ = sc.Report(ctx, taskid.ID(reg.TaskID), l.id, results)
			}
		}
	}()
	t.Cleanup(func() {
		<-loopDone
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close()
		}
		<-srvDone
	})
	return l
}

// serve answers one piece request the way the liar's mode lies.
func (l *liar) serve(w http.ResponseWriter, r *http.Request) {
	select {
	case l.uploads <- struct{}{}:
	default:
	}
	rg, err := httpx.ParseRange(r.Header.Get("Range"), int64(len(l.data)))
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return
	}
	off, n := rg.Start, rg.Length
	partial := func(length int64) {
		w.Header().Set("Content-Range", rg.ContentRange(int64(len(l.data))))
		if length >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
		}
		w.WriteHeader(http.StatusPartialContent)
	}
	switch l.mode {
	case liarCorrupt:
		partial(n)
		junk := make([]byte, n)
		for i := range junk {
			junk[i] = 0xAB
		}
		_, _ = w.Write(junk)
	case liarShort:
		partial(n - 1)
		_, _ = w.Write(l.data[off : off+n-1])
	case liarEndless:
		partial(-1)
		_, _ = w.Write(l.data[off : off+n])
		// Bounded: the client hangs up after one byte too many.
		more := make([]byte, 64<<10)
		for range 1024 {
			if _, err := w.Write(more); err != nil || r.Context().Err() != nil {
				return
			}
		}
	case liarWrongPiece:
		other := off + n
		if other+n > int64(len(l.data)) {
			other = 0
		}
		partial(n)
		_, _ = w.Write(l.data[other : other+n])
	case liarMissing:
		http.Error(w, "range not available", http.StatusNotFound)
	case liarSlowLoris:
		partial(n)
		rc := http.NewResponseController(w)
		for i := range min(n, 120) {
			if _, err := w.Write(l.data[off+i : off+i+1]); err != nil || rc.Flush() != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}
