package cdn

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// fakeTorrents serves files of one torrent from memory: a stand-in for the
// BitTorrent client (supernode/bt has its own tests against a real seeder).
type fakeTorrents struct {
	files map[string][]byte
	// btPiece is the torrent's piece length: bytes are handed over in
	// pieces of this size, in a random order, concurrently.
	btPiece int
	// failAfter, when > 0, fails the download after that many pieces.
	failAfter int
	// gate, when set, holds the download after the first half of the
	// pieces until closed.
	gate chan struct{}

	mu     sync.Mutex
	opened []string
}

func (ft *fakeTorrents) OpenFile(_ context.Context, link btlink.Link, file string) (TorrentFile, error) {
	ft.mu.Lock()
	ft.opened = append(ft.opened, link.InfoHash+"/"+file)
	ft.mu.Unlock()
	if file == "" {
		if len(ft.files) != 1 {
			var names []string
			for n := range ft.files {
				names = append(names, n)
			}
			return nil, fmt.Errorf("the torrent has %d files (%s): name one", len(ft.files), strings.Join(names, ", "))
		}
		for n := range ft.files {
			file = n
		}
	}
	data, ok := ft.files[file]
	if !ok {
		return nil, fmt.Errorf("no file %q in the torrent", file)
	}
	return &fakeTorrentFile{ft: ft, data: data}, nil
}

type fakeTorrentFile struct {
	ft   *fakeTorrents
	data []byte
}

func (tf *fakeTorrentFile) Size() int64  { return int64(len(tf.data)) }
func (tf *fakeTorrentFile) Close() error { return nil }

func (tf *fakeTorrentFile) Download(ctx context.Context, sink TorrentSink) error {
	n := (len(tf.data) + tf.ft.btPiece - 1) / tf.ft.btPiece
	order := mrand.Perm(n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for k, i := range order {
		if tf.ft.failAfter > 0 && k == tf.ft.failAfter {
			wg.Wait()
			return errors.New("no peer has the rest")
		}
		if tf.ft.gate != nil && k == n/2 {
			wg.Wait()
			select {
			case <-tf.ft.gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		wg.Go(func() {
			off := i * tf.ft.btPiece
			end := min(off+tf.ft.btPiece, len(tf.data))
			if _, err := sink.WriteAt(tf.data[off:end], int64(off)); err != nil {
				errs <- err
				return
			}
			sink.Verified(int64(off), int64(end-off))
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return ctx.Err()
}

const testInfoHash = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"

func torrentFixture(t *testing.T, ft *fakeTorrents) *fixture {
	t.Helper()
	f := &fixture{sched: newFakeSched(), store: contenttest.NewMemory(), dir: t.TempDir(), reg: prometheus.NewRegistry()}
	c, err := New(Config{Dir: f.dir}, f.store, httpSource{}, f.sched, WithMetrics(f.reg), WithTorrents(ft))
	require.NoError(t, err)
	f.cdn = c
	return f
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// TestTorrentSource: a magnet source's file arrives in the torrent's own
// pieces, in any order; every task piece is published once whole, and the
// task succeeds with the file's sha256 as its content digest.
func TestTorrentSource(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 9<<20+12345)
	ft := &fakeTorrents{files: map[string][]byte{"model/w.bin": data, "README": []byte("hi")}, btPiece: 256 << 10}
	f := torrentFixture(t, ft)
	link := "magnet:?xt=urn:btih:" + testInfoHash + "&x.pe=127.0.0.1:6881"
	id, err := taskid.Derive(taskid.Source{URL: link, File: "model/w.bin"})
	require.NoError(t, err)
	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: link, File: "model/w.bin"})
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), info.Size)
	task := f.settle(t, id)
	require.True(t, task.succeeded, "%+v", task.info)
	require.Equal(t, digest.FromBytes(data).String(), task.info.ContentDigest)
	requirePieces(t, task, data)
	got, err := f.store.ReaderAt(t.Context(), digest.FromBytes(data))
	require.NoError(t, err)
	b := make([]byte, len(data))
	_, err = got.ReadAt(b, 0)
	require.NoError(t, err)
	require.Equal(t, data, b)
	require.NoError(t, got.Close())
	require.Equal(t, []string{testInfoHash + "/model/w.bin"}, ft.opened)
	require.Equal(t, int64(len(data)), f.cdn.SourceBytes(id))
}

// TestTorrentPiecesBeforeTheEnd: pieces are published while the torrent
// is still downloading.
func TestTorrentPiecesBeforeTheEnd(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 16<<20)
	ft := &fakeTorrents{files: map[string][]byte{"a.bin": data}, btPiece: 4 << 20, gate: make(chan struct{})}
	f := torrentFixture(t, ft)
	link := "magnet:?xt=urn:btih:" + testInfoHash
	id, err := taskid.Derive(taskid.Source{URL: link})
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: link})
	require.NoError(t, err)
	task, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) > 0 })
	require.True(t, ok, "no piece published before the torrent was half done")
	require.False(t, task.succeeded)
	close(ft.gate)
	task = f.settle(t, id)
	require.True(t, task.succeeded, "%+v", task.info)
	requirePieces(t, task, data)
}

// TestTorrentFailures: a torrent that cannot be opened or downloaded fails
// the task with the reason, and nothing is committed.
func TestTorrentFailures(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 3<<20)
	for name, tc := range map[string]struct {
		ft   *fakeTorrents
		file string
		want string
	}{
		"several files, none named": {&fakeTorrents{files: map[string][]byte{"a": data, "b": data}, btPiece: 1 << 20}, "", "name one"},
		"no such file":              {&fakeTorrents{files: map[string][]byte{"a": data}, btPiece: 1 << 20}, "c", `no file "c"`},
		"download fails":            {&fakeTorrents{files: map[string][]byte{"a": data}, btPiece: 256 << 10, failAfter: 3}, "a", "no peer has the rest"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := torrentFixture(t, tc.ft)
			link := "magnet:?xt=urn:btih:" + testInfoHash
			id, err := taskid.Derive(taskid.Source{URL: link, File: tc.file})
			require.NoError(t, err)
			_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: link, File: tc.file})
			require.NoError(t, err)
			task := f.settle(t, id)
			require.Equal(t, schedapi.TaskFailed, task.info.State)
			require.Contains(t, task.info.Error, tc.want)
			_, err = f.store.Info(t.Context(), digest.FromBytes(data))
			require.Error(t, err, "nothing committed")
		})
	}

	// No BitTorrent client: a clear failure.
	f := &fixture{sched: newFakeSched(), store: contenttest.NewMemory(), dir: t.TempDir(), reg: prometheus.NewRegistry()}
	c, err := New(Config{Dir: f.dir}, f.store, httpSource{}, f.sched)
	require.NoError(t, err)
	f.cdn = c
	link := "magnet:?xt=urn:btih:" + testInfoHash
	id, err := taskid.Derive(taskid.Source{URL: link})
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: link})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Contains(t, task.info.Error, "does not fetch BitTorrent sources")

	// A file with an http source is refused.
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: "http://127.0.0.1:1/x", File: "a"})
	require.ErrorIs(t, err, ErrInvalid)
}
