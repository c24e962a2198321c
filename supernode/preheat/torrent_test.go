package preheat_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

// testMagnet names a tracker whose announce URL carries a passkey.
const testMagnet = "magnet:?xt=urn:btih:0123456789ABCDEF0123456789abcdef01234567&dn=Big+Set" +
	"&tr=https://tracker.test/s3cret/announce&ws=https://seed.test/files?key=k3y&x.pe=10.0.0.1:6881"

// ensureTasks is a task owner that records what it is asked to fetch and
// answers that it has it.
type ensureTasks struct {
	mu      sync.Mutex
	ensured []task.Request
}

func (f *ensureTasks) Ensure(_ context.Context, req task.Request) (schedapi.TaskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ensured = append(f.ensured, req)
	return schedapi.TaskInfo{TaskID: req.TaskID.String(), State: schedapi.TaskSucceeded, Size: 10, PieceSize: 10, PieceCount: 1}, nil
}

func (f *ensureTasks) Task(context.Context, taskid.ID) (scheduler.TaskStatus, error) {
	return scheduler.TaskStatus{}, errors.New("not asked: Ensure answers succeeded")
}

func (f *ensureTasks) requests() []task.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]task.Request(nil), f.ensured...)
}

func newTorrentPreheater(t *testing.T) (*preheat.Preheater, *ensureTasks) {
	t.Helper()
	tasks := &ensureTasks{}
	p := preheat.New(preheat.Config{}, nil, tasks)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return p, tasks
}

// A torrent preheat hands the CDN the link (trackers and all: the CDN needs
// them) under the task dfget names it by; its status shows the link as its
// info-hash and name only.
func TestPreheatTorrent(t *testing.T) {
	t.Parallel()
	d := digest.FromString("the file")
	tests := []struct {
		name     string
		req      preheat.Request
		wantURL  string
		wantTask func() (taskid.ID, error)
	}{
		{
			name:    "magnet and file",
			req:     preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, File: "Big Set/disk 2.iso"},
			wantURL: "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=Big+Set",
			wantTask: func() (taskid.ID, error) {
				return taskid.ForTorrent(testMagnet, "Big Set/disk 2.iso", "")
			},
		},
		{
			name:    "torrent file url, one file",
			req:     preheat.Request{Type: preheat.TypeTorrent, URL: "torrent+https://u:p@files.test/set.torrent?passkey=s3cret", Headers: map[string]string{"Authorization": "Bearer t"}},
			wantURL: "torrent+https://files.test/set.torrent",
			wantTask: func() (taskid.ID, error) {
				return taskid.ForTorrent("torrent+https://files.test/set.torrent?passkey=s3cret", "", "")
			},
		},
		{
			name:     "with a digest",
			req:      preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, File: "a.iso", Digest: d.String()},
			wantURL:  "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=Big+Set",
			wantTask: func() (taskid.ID, error) { return taskid.ForDigest(d) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, tasks := newTorrentPreheater(t)
			want, err := tt.wantTask()
			require.NoError(t, err)
			st, err := p.Create(t.Context(), tt.req)
			require.NoError(t, err)
			require.Equal(t, preheat.TypeTorrent, st.Type)
			require.Equal(t, tt.wantURL, st.URL)
			require.Equal(t, tt.req.File, st.File)
			require.Len(t, st.Layers, 1)
			require.Equal(t, want, st.Layers[0].TaskID)
			require.Eventually(t, func() bool {
				st, err = p.Get(t.Context(), st.ID)
				require.NoError(t, err)
				return st.State != preheat.StateRunning
			}, 10*time.Second, 10*time.Millisecond)
			require.Equal(t, preheat.StateSucceeded, st.State, st.Error)

			reqs := tasks.requests()
			require.Len(t, reqs, 1)
			require.Equal(t, want, reqs[0].TaskID)
			require.Equal(t, tt.req.URL, reqs[0].URL, "the CDN gets the whole link")
			require.Equal(t, tt.req.File, reqs[0].File)
			require.Equal(t, d == digest.Digest(tt.req.Digest), reqs[0].Digest == d)
			if tt.req.Headers != nil {
				require.Equal(t, "Bearer t", reqs[0].Header.Get("Authorization"))
			}
		})
	}
}

func TestPreheatTorrentRejectsBadInput(t *testing.T) {
	t.Parallel()
	p, tasks := newTorrentPreheater(t)
	tests := []struct {
		name string
		req  preheat.Request
		msg  string
	}{
		{"no url", preheat.Request{Type: preheat.TypeTorrent}, "want a magnet link"},
		{"http url", preheat.Request{Type: preheat.TypeTorrent, URL: "https://files.test/set.torrent"}, "want a magnet link"},
		{"magnet without info-hash", preheat.Request{Type: preheat.TypeTorrent, URL: "magnet:?dn=x"}, "info-hash"},
		{"torrent over ftp", preheat.Request{Type: preheat.TypeTorrent, URL: "torrent+ftp://h/x.torrent"}, "want a magnet link"},
		{"bad tracker", preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet + "&tr=https:///announce"}, "tracker"},
		{"file dot dot", preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, File: "../etc/passwd"}, "relative path"},
		{"file absolute", preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, File: "/x"}, "relative path"},
		{"bad digest", preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, Digest: "md5:abc"}, "digest"},
		{"credentials", preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, Password: "p"}, "for type \"image\""},
		{"insecure", preheat.Request{Type: preheat.TypeTorrent, URL: testMagnet, Insecure: true}, "for type \"image\""},
		{"magnet as a file", preheat.Request{Type: preheat.TypeFile, URL: testMagnet}, "is type \"torrent\""},
		{"file on a file", preheat.Request{Type: preheat.TypeFile, URL: "https://files.test/a", File: "a"}, "for type \"torrent\""},
		{"file on an image", preheat.Request{Type: preheat.TypeImage, URL: "app:1", File: "a"}, "for type \"torrent\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Create(t.Context(), tt.req)
			require.ErrorIs(t, err, preheat.ErrInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.NotContains(t, err.Error(), "s3cret")
		})
	}
	require.Empty(t, tasks.requests())
}
