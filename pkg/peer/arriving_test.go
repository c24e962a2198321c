package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// heldOrigin serves body, holding it after at bytes until release is
// closed; with abort it then drops the connection instead of sending the
// rest, the first time only.
type heldOrigin struct {
	body    []byte
	at      int
	release chan struct{}
	abort   bool
	gets    atomic.Int32
	url     string
}

func (o *heldOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", strconv.Itoa(len(o.body)))
	if o.gets.Add(1) > 1 {
		_, _ = w.Write(o.body)
		return
	}
	_, _ = w.Write(o.body[:o.at])
	w.(http.Flusher).Flush()
	select {
	case <-o.release:
	case <-r.Context().Done():
		return
	}
	if o.abort {
		panic(http.ErrAbortHandler)
	}
	_, _ = w.Write(o.body[o.at:])
}

// countingTransport counts the response body bytes its client reads.
type countingTransport struct{ n *atomic.Int64 }

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}

// cutThroughSetup runs a real supernode, an origin behind it and an engine
// named p1, and registers p1 for the origin's content.
func cutThroughSetup(t *testing.T, o *heldOrigin, received *atomic.Int64) (*Engine, *schedclient.Client, taskid.ID, schedapi.RegisterRequest) {
	t.Helper()
	origin := httptest.NewServer(o)
	t.Cleanup(origin.Close)
	o.url = origin.URL + "/blob"
	sn := supernodetest.Start(t, "cut-through-admin-token-0123456789")
	sc, err := schedclient.New([]string{sn.Addr}, schedclient.WithRetry(1, 0), schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	self := schedapi.Peer{ID: "p1", Addr: "127.0.0.1:9"}
	e, err := New(Config{PieceTimeout: 10 * time.Second}, contenttest.NewMemory(), sc, self,
		WithCDNClient(&http.Client{Transport: countingTransport{received}}))
	require.NoError(t, err)
	d := digest.FromBytes(o.body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	reg := schedapi.RegisterRequest{Peer: self, URL: o.url, Digest: d.String(), Size: int64(len(o.body))}
	_, err = sc.Register(t.Context(), reg)
	require.NoError(t, err)
	return e, sc, id, reg
}

// pollPiece polls until p1 is assigned piece n. A failed task (its source
// fetch was cut) is registered again with reg; a poll answered without
// piece n is followed by a pause, so the loop never spins on a supernode
// that answers at once.
func pollPiece(t *testing.T, sc *schedclient.Client, id taskid.ID, n int, reg schedapi.RegisterRequest) schedapi.Assignment {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	pause := 10 * time.Millisecond
	for time.Now().Before(deadline) {
		resp, err := sc.Pieces(t.Context(), id, "p1", 1, time.Second, schedapi.Want{Pieces: []int{n}, Background: 0})
		require.NoError(t, err)
		for _, a := range resp.Assignments {
			if a.Piece == n {
				return a
			}
			// Not this one: give it back.
			require.NoError(t, sc.Report(t.Context(), id, "p1", []schedapi.PieceResult{{Piece: a.Piece, From: a.From.ID, Reason: schedapi.ReasonAborted}}))
		}
		if resp.State == schedapi.TaskFailed {
			t.Logf("task failed (%s): registering again", resp.Error)
			if _, err := sc.Register(t.Context(), reg); err != nil {
				t.Logf("register: %v", err)
			}
		}
		time.Sleep(pause)
		pause = min(2*pause, 500*time.Millisecond)
	}
	t.Fatalf("piece %d was not assigned", n)
	return schedapi.Assignment{}
}

// A peer gets a piece the CDN is still receiving from a held origin: its
// first bytes arrive before the piece is complete (the origin holds it), and
// the peer checks the whole against the digest the CDN sends at the end.
func TestArrivingPieceFetchedBeforeTheCDNHasIt(t *testing.T) {
	t.Parallel()
	body := randomData(t, 2*int(piece.DefaultSize)+10)
	o := &heldOrigin{body: body, at: 1 << 20, release: make(chan struct{})}
	var received atomic.Int64
	e, sc, id, reg := cutThroughSetup(t, o, &received)

	a := pollPiece(t, sc, id, 0, reg)
	require.True(t, a.Arriving && a.FromCDN, "%+v", a)
	require.Empty(t, a.Digest)
	require.NoError(t, validAssignmentDigest(a))

	// The peer's fetch follows the CDN's read: it has the origin's first
	// MiB while the origin holds the rest.
	buf := make([]byte, a.Length)
	type out struct {
		a   schedapi.Assignment
		err error
	}
	done := make(chan out, 1)
	go func() {
		got, err := e.fetchVerified(t.Context(), id, a, buf, nil)
		done <- out{got, err}
	}()
	require.Eventually(t, func() bool { return received.Load() >= 1<<20 }, 10*time.Second, 5*time.Millisecond,
		"the first bytes arrive while the origin holds the piece")
	select {
	case r := <-done:
		t.Fatalf("fetch ended before the piece was complete: %v", r.err)
	default:
	}
	close(o.release)
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, piece.Digest(body[:piece.DefaultSize]).String(), r.a.Digest, "the trailer's digest becomes the assignment's")
	require.Equal(t, body[:piece.DefaultSize], buf)
	require.NoError(t, sc.Report(t.Context(), id, "p1", []schedapi.PieceResult{{Piece: 0, From: a.From.ID, OK: true, Bytes: a.Length}}))
}

// A source failure in the middle of the piece cuts the peer's transfer: a
// failure reported aborted (no strike; the CDN is never struck anyway), and
// the piece is fetched again once the content is fetched again.
func TestArrivingPieceCutBySourceFailure(t *testing.T) {
	t.Parallel()
	body := randomData(t, int(piece.DefaultSize)+10)
	o := &heldOrigin{body: body, at: 1 << 20, release: make(chan struct{}), abort: true}
	var received atomic.Int64
	e, sc, id, reg := cutThroughSetup(t, o, &received)

	a := pollPiece(t, sc, id, 0, reg)
	require.True(t, a.Arriving)
	buf := make([]byte, a.Length)
	done := make(chan error, 1)
	go func() {
		_, err := e.fetchVerified(t.Context(), id, a, buf, nil)
		done <- err
	}()
	require.Eventually(t, func() bool { return received.Load() >= 1<<20 }, 10*time.Second, 5*time.Millisecond)
	close(o.release)
	err := <-done
	require.ErrorIs(t, err, errArrivingCut)
	require.Equal(t, schedapi.ReasonAborted, pieceFailure(a, err))
	require.NoError(t, sc.Report(t.Context(), id, "p1", []schedapi.PieceResult{{Piece: 0, From: a.From.ID, Reason: pieceFailure(a, err), Error: failureReason(err)}}))

	// The content fetch failed with its only source, which fails the task;
	// registering again (pollPiece does) fetches the content again, and the
	// piece comes whole.
	got := pollPiece(t, sc, id, 0, reg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	verified, err := e.fetchVerified(ctx, id, got, buf, nil)
	require.NoError(t, err)
	require.Equal(t, piece.Digest(body[:piece.DefaultSize]).String(), verified.Digest)
	require.Equal(t, body[:piece.DefaultSize], buf)
}

// A CDN that lies in its trailer, or sends none, or more bytes, is caught
// before the piece is used.
func TestArrivingPieceTrailerChecked(t *testing.T) {
	t.Parallel()
	data := randomData(t, 1000)
	good := piece.Digest(data).String()
	cases := []struct {
		name    string
		trailer string
		extra   []byte
		want    error
	}{
		{"good", good, nil, nil},
		{"lying digest", piece.Digest([]byte("other")).String(), nil, errDigestMismatch},
		{"malformed digest", "sha256:zz", nil, errBadTrailer},
		{"no digest", "", nil, errBadTrailer},
		{"long body", good, []byte("x"), errLongBody},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get(schedapi.HeaderArriving) != "1" {
					http.Error(w, "not marked", http.StatusBadRequest)
					return
				}
				w.Header().Set("Trailer", schedapi.TrailerPieceDigest)
				w.WriteHeader(http.StatusPartialContent)
				_, _ = w.Write(data)
				_, _ = w.Write(tc.extra)
				if tc.trailer != "" {
					w.Header().Set(schedapi.TrailerPieceDigest, tc.trailer)
				}
			}))
			defer srv.Close()
			e := newTestEngine(t, "127.0.0.1:1", engineSetup{})
			a := schedapi.Assignment{Piece: 0, Offset: 0, Length: int64(len(data)), From: schedapi.Peer{ID: "supernode", Addr: srv.Listener.Addr().String()}, FromCDN: true, Arriving: true}
			id := taskid.ID(fmt.Sprintf("%064x", 1))
			buf := make([]byte, len(data))
			got, err := e.fetchVerified(t.Context(), id, a, buf, nil)
			if tc.want == nil {
				require.NoError(t, err)
				require.Equal(t, good, got.Digest)
				return
			}
			require.True(t, errors.Is(err, tc.want), "%v", err)
			require.Equal(t, schedapi.ReasonCorrupt, pieceFailure(a, err))
		})
	}
	// An assignment without a digest is valid only arriving from the CDN.
	require.Error(t, validAssignmentDigest(schedapi.Assignment{Arriving: true}))
	require.Error(t, validAssignmentDigest(schedapi.Assignment{FromCDN: true}))
}
