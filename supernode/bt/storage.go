package bt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// storage holds one torrent's piece data for anacrolix: a piece's chunks
// collect in a memory buffer (anacrolix bounds the unverified bytes with
// MaxUnverifiedBytes) that serves the hash check; MarkComplete hands the
// part of the piece inside the selected file to the Sink, then calls
// Verified, and drops the buffer. Bytes of other files are dropped, and a
// piece that fails its hash (MarkNotComplete) never reaches the Sink.
// A piece is complete iff it was handed to the Sink. Nothing is written to
// disk.
//
// When seeding, a completed piece is read back from the Sink's
// io.ReaderAt; a piece that straddles the selected file's edges keeps its
// whole buffer (at most two such pieces), so it can be served in full.
type pieceStore struct {
	seed bool

	mu       sync.Mutex
	pieceLen int64
	target   *target        // the selected file; nil before Download
	bufs     map[int][]byte // unverified (or, seeding, straddling verified) pieces
	written  map[int]bool   // handed to the Sink (exactly once)
	complete map[int]bool   // reported complete to anacrolix
	progress chan struct{}  // signalled on every verified piece and on sink errors
	sinkErr  error          // first Sink error
	left     int64          // bytes of the target not yet verified
}

// target is the file a Download selected.
type target struct {
	off, length int64 // within the torrent's byte space
	sink        Sink
}

func newPieceStore(seed bool) *pieceStore {
	return &pieceStore{
		seed:     seed,
		bufs:     map[int][]byte{},
		written:  map[int]bool{},
		complete: map[int]bool{},
		progress: make(chan struct{}, 1),
	}
}

var _ storage.ClientImpl = (*pieceStore)(nil)

// OpenTorrent implements storage.ClientImpl.
func (s *pieceStore) OpenTorrent(_ context.Context, info *metainfo.Info, _ metainfo.Hash) (storage.TorrentImpl, error) {
	s.mu.Lock()
	s.pieceLen = info.PieceLength
	s.mu.Unlock()
	return storage.TorrentImpl{
		Piece: func(p metainfo.Piece) storage.PieceImpl {
			return &piece{s: s, index: p.Index(), off: p.Offset(), length: p.Length()}
		},
		Close: func() error { return nil },
	}, nil
}

// setTarget selects the file Download fetches; once per torrent.
func (s *pieceStore) setTarget(t *target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.target != nil {
		return errors.New("a file of this torrent was already downloaded; open the torrent again for another")
	}
	s.target = t
	s.left = t.length
	return nil
}

// state returns the bytes left to verify and the first sink error.
func (s *pieceStore) state() (left int64, sinkErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.left, s.sinkErr
}

func (s *pieceStore) signal() {
	select {
	case s.progress <- struct{}{}:
	default:
	}
}

// piece is one piece of the torrent.
type piece struct {
	s           *pieceStore
	index       int
	off, length int64
}

var _ storage.PieceImpl = (*piece)(nil)

func (p *piece) WriteAt(b []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(b)) > p.length {
		return 0, fmt.Errorf("piece %d: write [%d, %d) outside its %d bytes", p.index, off, off+int64(len(b)), p.length)
	}
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	buf := s.bufs[p.index]
	if buf == nil {
		buf = make([]byte, p.length)
		s.bufs[p.index] = buf
	}
	return copy(buf[off:], b), nil
}

func (p *piece) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= p.length {
		return 0, io.EOF
	}
	s := p.s
	s.mu.Lock()
	buf := s.bufs[p.index]
	if buf != nil {
		n := copy(b, buf[off:])
		s.mu.Unlock()
		if n < len(b) {
			return n, io.EOF
		}
		return n, nil
	}
	t, written := s.target, s.written[p.index]
	s.mu.Unlock()
	if !written || !s.seed || t == nil {
		return 0, fmt.Errorf("piece %d: no data held", p.index)
	}
	// A written piece without a buffer lies inside the target file: read it
	// back from the sink, when it can.
	ra, ok := t.sink.(io.ReaderAt)
	if !ok {
		return 0, fmt.Errorf("piece %d: the sink cannot read back", p.index)
	}
	if int64(len(b)) > p.length-off {
		b = b[:p.length-off]
	}
	n, err := ra.ReadAt(b, p.off+off-t.off)
	if err == nil && off+int64(n) == p.length {
		err = io.EOF
	}
	return n, err
}

func (p *piece) MarkComplete() error {
	s := p.s
	s.mu.Lock()
	if s.written[p.index] {
		// Verified again (anacrolix re-checks): the sink already has it.
		s.complete[p.index] = true
		if !s.seed || !p.straddles() {
			delete(s.bufs, p.index)
		}
		s.mu.Unlock()
		return nil
	}
	buf, t := s.bufs[p.index], s.target
	s.mu.Unlock()
	if buf == nil {
		return fmt.Errorf("piece %d: marked complete without data", p.index)
	}
	// The part of the piece inside the target, if any.
	var lo, hi int64
	if t != nil {
		lo, hi = max(p.off, t.off), min(p.off+p.length, t.off+t.length)
	}
	if hi > lo {
		n, err := t.sink.WriteAt(buf[lo-p.off:hi-p.off], lo-t.off)
		if err == nil && n != int(hi-lo) {
			err = io.ErrShortWrite
		}
		if err != nil {
			err = fmt.Errorf("piece %d: sink: %w", p.index, err)
			s.mu.Lock()
			if s.sinkErr == nil {
				s.sinkErr = err
			}
			s.mu.Unlock()
			s.signal()
			return err
		}
		t.sink.Verified(lo-t.off, hi-lo)
	}
	s.mu.Lock()
	s.written[p.index] = true
	s.complete[p.index] = true
	if !s.seed || !p.straddles() {
		delete(s.bufs, p.index)
	}
	if hi > lo {
		s.left -= hi - lo
	}
	s.mu.Unlock()
	s.signal()
	return nil
}

// straddles reports whether the piece holds bytes outside the target;
// s.mu is held.
func (p *piece) straddles() bool {
	t := p.s.target
	return t == nil || p.off < t.off || p.off+p.length > t.off+t.length
}

func (p *piece) MarkNotComplete() error {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.written[p.index] {
		// Failed its hash (or anacrolix dropped it): discard.
		delete(s.bufs, p.index)
	}
	s.complete[p.index] = false
	return nil
}

func (p *piece) Completion() storage.Completion {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return storage.Completion{Ok: true, Complete: s.complete[p.index]}
}
