package cdn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
)

// Torrent sources. A magnet link or a torrent+http(s) URL is fetched by the
// supernode's BitTorrent client (TorrentClient, supernode/bt) as one member
// of the torrent's swarm. The client hands over the bytes of the file the
// task names only once the torrent's own piece hashes verified them, in any
// order; they go into the ingest, and each of the task's own pieces is
// published as soon as every byte of it is there, so peers start long before
// the torrent is complete. The ingest hashes the file as it fills, and the
// sha256 becomes the task's content digest. Nothing else differs from an
// http source: the scheduler, the peers, the cache and the GC see a task.

// TorrentClient fetches files of torrents (supernode/bt over
// anacrolix/torrent).
type TorrentClient interface {
	// OpenFile adds the torrent of link, waits for its metadata and picks
	// file (empty: the only one; an error listing the files when there are
	// several).
	OpenFile(ctx context.Context, link btlink.Link, file string) (TorrentFile, error)
}

// TorrentFile is one file of a torrent being fetched.
type TorrentFile interface {
	// Size is the file's length.
	Size() int64
	// Download fetches the file into sink: every byte once, verified by
	// the torrent's piece hashes before it is written. It returns nil once
	// the whole file is verified and written.
	Download(ctx context.Context, sink TorrentSink) error
	// Close drops the torrent from the client.
	Close() error
}

// TorrentSink takes the verified bytes of a torrent's file.
type TorrentSink interface {
	// WriteAt stores verified bytes at file offset off, each byte once, in
	// any order; it may be called concurrently.
	WriteAt(p []byte, off int64) (int, error)
	// Verified says [off, off+n) is written.
	Verified(off, n int64)
}

// WithTorrents sets the client that fetches magnet and torrent+http(s)
// sources. Without it such tasks fail with a clear error.
func WithTorrents(tc TorrentClient) Option { return func(o *options) { o.torrents = tc } }

// errNoTorrents: this supernode has no BitTorrent client.
var errNoTorrents = errors.New("this supernode does not fetch BitTorrent sources (cdn.bt.enabled: false)")

// startTorrent opens the torrent's file, adds the task with the file's
// size, and leaves a goroutine fetching it. A torrent that cannot be opened
// (no metadata in time, several files and none named, a file that is not
// there) yields a failed task, not an error.
func (c *CDN) startTorrent(ctx context.Context, req Request, expected digest.Digest, log *zap.Logger) error {
	return c.start(ctx, req, expected, log, func(fctx context.Context, f *fetch) (opened, error) {
		if c.torrents == nil {
			return opened{}, errNoTorrents
		}
		link, err := btlink.Parse(req.URL)
		if err != nil {
			return opened{}, err
		}
		tf, err := c.torrents.OpenFile(fctx, link, req.File)
		if err != nil {
			return opened{}, fmt.Errorf("torrent: %w", err)
		}
		size := tf.Size()
		switch {
		case size > int64(c.cfg.MaxSourceSize):
			err = fmt.Errorf("torrent file of %d bytes, more than cdn.maxSourceSize (%s)", size, c.cfg.MaxSourceSize)
		case req.Size > 0 && size != req.Size:
			err = fmt.Errorf("torrent file of %d bytes, the member that asked knows %d", size, req.Size)
		default:
			err = c.checkSpace(fctx, size)
		}
		if err != nil {
			_ = tf.Close()
			return opened{}, err
		}
		return opened{
			kind:   "torrent",
			size:   size,
			stream: func(fctx context.Context) { c.torrentStream(fctx, f, tf, expected, log) },
			abort:  func() { _ = tf.Close() },
		}, nil
	})
}

// torrentStream fetches a torrent's file into the ingest, publishing each
// piece as soon as it is whole, then commits and settles the task.
func (c *CDN) torrentStream(ctx context.Context, f *fetch, tf TorrentFile, expected digest.Digest, log *zap.Logger) {
	defer f.cancel()
	defer c.finish(f)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	d, m, err := c.copyTorrent(ctx, f, tf, expected)
	if cerr := tf.Close(); cerr != nil {
		log.Debug("close torrent", zap.Error(cerr))
	}
	if err != nil && errors.Is(err, content.ErrDigestMismatch) {
		err = fmt.Errorf("the torrent's file is not the content asked for: %w", err)
	}
	c.settle(ctx, sctx, f, d, m, err, log)
}

// copyTorrent runs the download into a sink that publishes whole pieces.
func (c *CDN) copyTorrent(ctx context.Context, f *fetch, tf TorrentFile, expected digest.Digest) (digest.Digest, pieceMeta, error) {
	f.mu.RLock()
	w, size, pieceSize := f.w, f.size, f.pieceSize
	f.mu.RUnlock()
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	s := &torrentSink{c: c, f: f, w: w, size: size, pieceSize: pieceSize,
		have: make([]int64, piece.Count(size, pieceSize)), spans: make(chan [2]int64, 256)}
	pubDone := make(chan error, 1)
	go func() {
		err := s.publish(dctx)
		if err != nil {
			stop() // the download cannot go on
			for range s.spans {
				// Keep Verified from blocking until the download stops.
			}
		}
		pubDone <- err
	}()
	err := tf.Download(dctx, s)
	s.close()
	perr := <-pubDone
	switch {
	case perr != nil:
		return "", pieceMeta{}, perr
	case err != nil:
		return "", pieceMeta{}, fmt.Errorf("torrent download: %w", err)
	}
	f.pmu.Lock()
	complete, pieces := f.prog.complete(), slices.Clone(f.prog.digests)
	f.pmu.Unlock()
	if !complete {
		return "", pieceMeta{}, errors.New("torrent download ended with pieces missing")
	}
	return c.commitIngest(ctx, f, w, size, expected, pieceSize, pieces)
}

// torrentSink stores a torrent's verified bytes and publishes the task's
// pieces as they complete.
type torrentSink struct {
	c         *CDN
	f         *fetch
	w         content.Writer
	size      int64
	pieceSize int64

	mu     sync.Mutex
	closed bool
	spans  chan [2]int64 // verified spans, to publish; closed by close
	// have counts the verified bytes of each piece (publish's only).
	have []int64
}

func (s *torrentSink) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("torrent bytes [%d, %d) outside the file of %d bytes", off, off+int64(len(p)), s.size)
	}
	n, err := s.w.WriteAt(p, off)
	if isNoSpace(err) {
		s.c.makeRoom(context.Background(), int64(len(p)))
		n, err = s.w.WriteAt(p, off)
	}
	s.f.read.Add(int64(n))
	s.c.metrics.sourceBytes.Add(float64(n))
	return n, err
}

// ReadAt reads written bytes back: when the BitTorrent client seeds
// (cdn.bt.seed), it serves the swarm from them while the fetch runs.
func (s *torrentSink) ReadAt(p []byte, off int64) (int, error) { return s.w.ReadAt(p, off) }

func (s *torrentSink) Verified(off, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && n > 0 {
		s.spans <- [2]int64{off, n}
	}
}

func (s *torrentSink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.spans)
	}
}

// publish counts the verified bytes of each piece and publishes every
// piece whose bytes are all there, hashing it from the ingest.
func (s *torrentSink) publish(ctx context.Context) error {
	buf := make([]byte, s.pieceSize)
	for sp := range s.spans {
		off, end := sp[0], min(sp[0]+sp[1], s.size)
		for off < end {
			n := int(off / s.pieceSize)
			pOff, pLen := piece.Bounds(n, s.size, s.pieceSize)
			take := min(end, pOff+pLen) - off
			s.have[n] += take
			off += take
			if s.have[n] > pLen {
				return fmt.Errorf("the torrent client verified bytes of piece %d twice", n)
			}
			if s.have[n] != pLen {
				continue
			}
			p := buf[:pLen]
			if _, err := s.w.ReadAt(p, pOff); err != nil {
				return fmt.Errorf("read piece %d back: %w", n, err)
			}
			d := piece.Digest(p)
			s.f.pmu.Lock()
			s.f.prog.store(n, d, pLen, nil)
			s.f.pmu.Unlock()
			s.f.mu.Lock()
			s.f.published.Add(n)
			s.f.mu.Unlock()
			if err := s.c.sched.PublishPiece(ctx, s.f.taskID, n, d); err != nil {
				return fmt.Errorf("%w %d: %w", errPublish, n, err)
			}
		}
	}
	return nil
}
