package bt

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/anacrolix/torrent"
	"go.uber.org/zap"
)

// Sink receives a file's verified bytes.
type Sink interface {
	// WriteAt stores verified bytes of the file at file-relative off,
	// exactly once per byte range, in any order; it may be called
	// concurrently.
	WriteAt(p []byte, off int64) (int, error)
	// Verified says [off, off+n) of the file are written and verified
	// (called after WriteAt returned for them).
	Verified(off, n int64)
}

// A Sink that also implements io.ReaderAt serves uploads of completed
// pieces when Config.Seed is on; without it only the pieces still held in
// memory can be uploaded.

// File is a file of a torrent.
type File struct {
	// Path is slash-separated, as in the torrent (for a single-file torrent,
	// its name).
	Path   string
	Length int64
}

// Stats are a torrent's counters.
type Stats struct {
	// BytesRead and BytesWritten are piece data read from and uploaded to
	// the swarm (peers and web seeds).
	BytesRead    int64
	BytesWritten int64
	// Peers is the count of connected peers; Seeders of them have every
	// piece.
	Peers   int
	Seeders int
	// PiecesFailed counts pieces that failed their hash check.
	PiecesFailed int64
}

// Torrent is an open torrent, with its metadata.
type Torrent struct {
	c     *Client
	cl    *torrent.Client
	t     *torrent.Torrent
	store *pieceStore
	ih    string

	files  []File
	byPath map[string]*torrent.File
}

// index lists the torrent's files and checks the caps.
func (t *Torrent) index() error {
	mi := t.t.Metainfo()
	if n := int64(len(mi.InfoBytes)); n > t.c.cfg.MaxMetadataSize {
		return fmt.Errorf("bt: torrent %s: info of %d bytes, more than bt.maxMetadataSize %d: %w", t.ih, n, t.c.cfg.MaxMetadataSize, ErrTooLarge)
	}
	all := t.t.Files()
	if len(all) > t.c.cfg.MaxFiles {
		return fmt.Errorf("bt: torrent %s: %d files, more than bt.maxFiles %d: %w", t.ih, len(all), t.c.cfg.MaxFiles, ErrTooLarge)
	}
	t.byPath = make(map[string]*torrent.File, len(all))
	for _, f := range all {
		if strings.Contains(f.FileInfo().Attr, "p") {
			continue // BEP 47 padding
		}
		t.files = append(t.files, File{Path: f.DisplayPath(), Length: f.Length()})
		t.byPath[f.DisplayPath()] = f
	}
	return nil
}

// InfoHash is the v1 info-hash, 40 lowercase hex characters.
func (t *Torrent) InfoHash() string { return t.ih }

// Name is the torrent's name.
func (t *Torrent) Name() string { return t.t.Name() }

// Files lists the torrent's files (padding files left out), in torrent
// order.
func (t *Torrent) Files() []File { return append([]File(nil), t.files...) }

// File returns the file at path; "" is the only file, an error listing the
// files when there are several.
func (t *Torrent) File(path string) (File, error) {
	if path == "" {
		if len(t.files) == 1 {
			return t.files[0], nil
		}
		names := make([]string, len(t.files))
		for i, f := range t.files {
			names[i] = f.Path
		}
		sort.Strings(names)
		const show = 20
		list := strings.Join(names[:min(len(names), show)], ", ")
		if len(names) > show {
			list += fmt.Sprintf(", … (%d more)", len(names)-show)
		}
		return File{}, fmt.Errorf("torrent %s has %d files: %s: %w", t.ih, len(names), list, ErrNotFound)
	}
	f, ok := t.byPath[path]
	if !ok {
		return File{}, fmt.Errorf("torrent %s: %q: %w", t.ih, path, ErrNotFound)
	}
	return File{Path: path, Length: f.Length()}, nil
}

// Download fetches f, handing its bytes to sink as the torrent's piece
// hashes verify them, and returns nil once every byte of f is verified and
// written. Only the pieces overlapping f are downloaded. It fails when ctx
// is done, when no piece is verified for Config.StallTimeout (ErrStalled:
// no peers, peers refused by the outbound policy, or only bad pieces), or
// on a sink error. A torrent downloads one file, once; open it again for
// another. When Download fails the file's pieces are no longer requested.
func (t *Torrent) Download(ctx context.Context, f File, sink Sink) error {
	tf, ok := t.byPath[f.Path]
	if !ok || tf.Length() != f.Length {
		return fmt.Errorf("bt: torrent %s: %q: %w", t.ih, f.Path, ErrNotFound)
	}
	if err := t.store.setTarget(&target{off: tf.Offset(), length: tf.Length(), sink: sink}); err != nil {
		return fmt.Errorf("bt: torrent %s: %w", t.ih, err)
	}
	if f.Length == 0 {
		return nil
	}
	if _, ok := sink.(io.ReaderAt); t.c.cfg.Seed && !ok {
		t.c.log.Warn("seeding with a sink that cannot read back: only pieces shared with other files are uploaded",
			zap.String("torrent", t.ih), zap.String("file", f.Path))
	}
	tf.SetPriority(torrent.PiecePriorityNormal)
	stall := t.c.cfg.StallTimeout
	timer := time.NewTimer(stall)
	defer timer.Stop()
	lastLeft := f.Length
	for {
		left, sinkErr := t.store.state()
		if sinkErr != nil {
			tf.SetPriority(torrent.PiecePriorityNone)
			return fmt.Errorf("bt: torrent %s: %q: %w", t.ih, f.Path, sinkErr)
		}
		if left == 0 {
			return nil
		}
		if left != lastLeft {
			lastLeft = left
			timer.Reset(stall)
		}
		select {
		case <-t.store.progress:
		case <-timer.C:
			tf.SetPriority(torrent.PiecePriorityNone)
			st := t.Stats()
			return fmt.Errorf("bt: torrent %s: %q: nothing verified for %s, %d of %d bytes left (%d peers, %d pieces failed their hash check%s): %w",
				t.ih, f.Path, stall, left, f.Length, st.Peers, st.PiecesFailed, t.c.dialHint(t.cl), ErrStalled)
		case <-ctx.Done():
			tf.SetPriority(torrent.PiecePriorityNone)
			return fmt.Errorf("bt: torrent %s: %q: %w", t.ih, f.Path, ctx.Err())
		}
	}
}

// Stats returns the torrent's counters.
func (t *Torrent) Stats() Stats {
	st := t.t.Stats()
	return Stats{
		BytesRead:    st.BytesReadData.Int64(),
		BytesWritten: st.BytesWrittenData.Int64(),
		Peers:        st.ActivePeers,
		Seeders:      st.ConnectedSeeders,
		PiecesFailed: st.PiecesDirtiedBad.Int64(),
	}
}

// Close drops the torrent from the client.
func (t *Torrent) Close() error {
	t.t.Drop()
	t.c.release(t.ih)
	return nil
}
