package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
)

// A peer that claims every piece it is assigned without fetching it, and
// serves garbage for any range: honest peers catch it by the piece digest,
// the supernode strikes it, and every honest download finishes correctly.
func TestCorruptPeerStruck(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const peers, size = 4, 32 * mib
	o := newOrigin(t, size, 16*mib)
	sn := startSupernode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	l := startLiar(t, ctx, sn.addr, o.url("corrupt"))
	// Let the liar claim some pieces before the honest peers arrive.
	require.Eventually(t, func() bool { return l.claimed() >= 2 }, time.Minute, 10*time.Millisecond)

	dir := t.TempDir()
	var ds []*dfget
	for i := range peers {
		ds = append(ds, startDfget(t, ctx, o.url("corrupt"), filepath.Join(dir, fmt.Sprintf("out-%d", i)),
			"--node", sn.addr, "--notbs"))
	}
	for i, d := range ds {
		require.NoError(t, d.wait(t, 3*time.Minute), "peer %d stderr:\n%s", i, d.stderr.String())
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
}

// liar is a hostile peer speaking the real peer protocol.
type liar struct {
	id      string
	claims  chan struct{}
	uploads chan struct{}
}

func (l *liar) claimed() int { return len(l.claims) }
func (l *liar) served() int  { return len(l.uploads) }

func startLiar(t *testing.T, ctx context.Context, node, url string) *liar {
	t.Helper()
	l := &liar{id: "liar", claims: make(chan struct{}, 1<<16), uploads: make(chan struct{}, 1<<16)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := upload.New(garbage{l})
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(ctx, ln) }()

	sc, err := schedclient.New([]string{node})
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
			resp, err := sc.Pieces(ctx, reg.TaskID, l.id, schedapi.MaxAssignments, time.Second)
			if err != nil {
				if errors.Is(err, schedclient.ErrPeerNotFound) || ctx.Err() != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			var results []schedapi.PieceResult
			for _, a := range resp.Assignments {
				results = append(results, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, OK: true, Bytes: a.Length})
				l.claims <- struct{}{}
			}
			if len(results) > 0 {
				_ = sc.Report(ctx, reg.TaskID, l.id, results)
			}
		}
	}()
	t.Cleanup(func() {
		<-loopDone
		<-srvDone
	})
	return l
}

// garbage serves every task as fully verified bytes of 0xAB.
type garbage struct{ l *liar }

func (g garbage) Open(context.Context, string) (upload.Task, error) { return garbageTask{g.l}, nil }

type garbageTask struct{ l *liar }

func (garbageTask) Size() int64                { return -1 }
func (garbageTask) Verified(int64, int64) bool { return true }
func (garbageTask) Close() error               { return nil }
func (g garbageTask) ReadAt(p []byte, _ int64) (int, error) {
	select {
	case g.l.uploads <- struct{}{}:
	default:
	}
	for i := range p {
		p[i] = 0xAB
	}
	return len(p), nil
}
