package cdn

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// The data directory wiped under a running CDN: a task the scheduler still
// holds as succeeded is dropped when its content turns out to be gone (on
// the next Ensure, or when a peer asks for a piece), and fetched again from
// the source, into directories created afresh.
func TestContentWipedUnderRunningCDN(t *testing.T) {
	t.Parallel()
	body := blob(11, 5<<20+77)
	d := digest.FromBytes(body)
	byDigest, err := taskid.ForDigest(d)
	require.NoError(t, err)

	tests := []struct {
		name string
		id   func(o *origin) taskid.ID
		// viaOpen: the content is found missing by a peer's piece request
		// first, not by a registration.
		viaOpen bool
	}{
		{"url task, next registration", func(o *origin) taskid.ID { return mustURLTask(t, o.url("/b")) }, false},
		{"digest task, next registration", func(*origin) taskid.ID { return byDigest }, false},
		{"url task, piece request", func(o *origin) taskid.ID { return mustURLTask(t, o.url("/b")) }, true},
		{"digest task, piece request", func(*origin) taskid.ID { return byDigest }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, &origin{body: body})
			root := t.TempDir()
			f := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
			id := tt.id(o)
			_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
			require.NoError(t, err)
			require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)

			// Wipe everything under the data directory.
			entries, err := os.ReadDir(root)
			require.NoError(t, err)
			for _, e := range entries {
				require.NoError(t, os.RemoveAll(filepath.Join(root, e.Name())))
			}

			if tt.viaOpen {
				_, err := f.cdn.Open(t.Context(), id)
				require.ErrorIs(t, err, ErrNotFound)
				_, ok := f.sched.snapshot(id)
				require.False(t, ok, "a task whose content is gone must be dropped")
			}
			info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
			require.NoError(t, err)
			require.NotEqual(t, schedapi.TaskFailed, info.State)
			task := f.settle(t, id)
			require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
			requirePieces(t, task, body)
			require.EqualValues(t, 2, o.gets.Load(), "the content is fetched again")
			require.Equal(t, body, readBlob(t, f.store, d))
			require.FileExists(t, filepath.Join(root, "cdn", "meta", d.Encoded()+".json"))
			require.InDelta(t, 1, metricValue(t, f.reg, "damselfly_cdn_content_gone_total"), 0)

			h, err := f.cdn.Open(t.Context(), id)
			require.NoError(t, err)
			defer h.Close()
			buf := make([]byte, 64)
			_, err = h.ReadAt(buf, 5<<20)
			require.NoError(t, err)
			require.Equal(t, body[5<<20:5<<20+64], buf)

			// Content present: nothing is dropped.
			require.False(t, f.cdn.dropIfGone(t.Context(), id))
		})
	}
}

// A task whose content is merely unknown to the CDN (never fetched here) is
// not the CDN's to drop.
func TestOpenMissingTaskDropsNothing(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, &origin{body: []byte("x")})
	f := newFixture(t, o, nil, "")
	id := taskid.ID("sha256:" + digest.FromString("other").Encoded())
	require.NoError(t, f.sched.AddTask(t.Context(), scheduler.TaskSpec{ID: id, Size: -1, PieceSize: 4 << 20}))
	_, err := f.cdn.Open(t.Context(), id)
	require.True(t, errors.Is(err, ErrNotFound), err)
	_, ok := f.sched.snapshot(id)
	require.True(t, ok, "a running task is left alone")
}

func mustURLTask(t *testing.T, u string) taskid.ID {
	t.Helper()
	id, err := taskid.ForURL(u, nil, "")
	require.NoError(t, err)
	return id
}
