// Package contenttest holds the conformance suite every content.Store
// implementation passes (Suite) and an in-memory implementation (NewMemory)
// for other packages' tests.
package contenttest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/content"
)

// Memory is an in-memory content.Store. It follows the same contract as the
// disk store, including ref and digest validation, so tests written against
// it hold for the real one.
type Memory struct {
	mu      sync.Mutex
	blobs   map[digest.Digest]*memBlob
	ingests map[string]*memWriter
}

var _ content.Store = (*Memory)(nil)

type memBlob struct {
	data       []byte
	createdAt  time.Time
	accessedAt time.Time
}

// NewMemory returns an empty in-memory store.
func NewMemory() content.Store {
	return &Memory{
		blobs:   make(map[digest.Digest]*memBlob),
		ingests: make(map[string]*memWriter),
	}
}

func validRef(ref string) error {
	if ref == "" || len(ref) > 128 || ref == "." || ref == ".." {
		return fmt.Errorf("ref %q: %w", ref, content.ErrInvalid)
	}
	for i := 0; i < len(ref); i++ {
		c := ref[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("ref %q: %w", ref, content.ErrInvalid)
		}
	}
	return nil
}

func validDigest(d digest.Digest) error {
	if !strings.HasPrefix(string(d), "sha256:") || d.Validate() != nil {
		return fmt.Errorf("digest %q: %w", d, content.ErrInvalid)
	}
	return nil
}

// Info describes a committed blob.
func (m *Memory) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if err := validDigest(dgst); err != nil {
		return content.Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[dgst]
	if !ok {
		return content.Info{}, fmt.Errorf("content %s: %w", dgst, content.ErrNotFound)
	}
	return b.info(dgst), nil
}

func (b *memBlob) info(d digest.Digest) content.Info {
	return content.Info{Digest: d, Size: int64(len(b.data)), CreatedAt: b.createdAt, AccessedAt: b.accessedAt}
}

// Walk calls fn for every committed blob in digest order.
func (m *Memory) Walk(ctx context.Context, fn func(content.Info) error) error {
	m.mu.Lock()
	infos := make([]content.Info, 0, len(m.blobs))
	for d, b := range m.blobs {
		infos = append(infos, b.info(d))
	}
	m.mu.Unlock()
	slices.SortFunc(infos, func(a, b content.Info) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	for _, i := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(i); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes a committed blob.
func (m *Memory) Delete(ctx context.Context, dgst digest.Digest) error {
	if err := validDigest(dgst); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[dgst]; !ok {
		return fmt.Errorf("content %s: %w", dgst, content.ErrNotFound)
	}
	delete(m.blobs, dgst)
	return nil
}

// ReaderAt opens a committed blob.
func (m *Memory) ReaderAt(ctx context.Context, dgst digest.Digest) (content.ReaderAt, error) {
	if err := validDigest(dgst); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[dgst]
	if !ok {
		return nil, fmt.Errorf("content %s: %w", dgst, content.ErrNotFound)
	}
	b.accessedAt = time.Now()
	return &memReader{Reader: bytes.NewReader(b.data)}, nil
}

type memReader struct{ *bytes.Reader }

func (r *memReader) Close() error { return nil }

// Writer starts a fresh ingest under ref.
func (m *Memory) Writer(ctx context.Context, ref string) (content.Writer, error) {
	if err := validRef(ref); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ingests[ref]; ok {
		return nil, fmt.Errorf("ingest %s: %w", ref, content.ErrUnavailable)
	}
	now := time.Now()
	w := &memWriter{m: m, ref: ref, startedAt: now, updatedAt: now}
	m.ingests[ref] = w
	return w, nil
}

// Status describes the ingest under ref.
func (m *Memory) Status(ctx context.Context, ref string) (content.Status, error) {
	if err := validRef(ref); err != nil {
		return content.Status{}, err
	}
	m.mu.Lock()
	w, ok := m.ingests[ref]
	m.mu.Unlock()
	if !ok {
		return content.Status{}, fmt.Errorf("ingest %s: %w", ref, content.ErrNotFound)
	}
	return w.Status()
}

// ListStatuses describes every ingest, sorted by ref.
func (m *Memory) ListStatuses(ctx context.Context) ([]content.Status, error) {
	m.mu.Lock()
	ws := make([]*memWriter, 0, len(m.ingests))
	for _, w := range m.ingests {
		ws = append(ws, w)
	}
	m.mu.Unlock()
	out := make([]content.Status, 0, len(ws))
	for _, w := range ws {
		if st, err := w.Status(); err == nil {
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(a, b content.Status) int { return strings.Compare(a.Ref, b.Ref) })
	return out, nil
}

// Abort removes an ingest no writer holds. In memory an ingest lives only as
// long as its writer, so this is ErrUnavailable for a held ref and
// ErrNotFound otherwise.
func (m *Memory) Abort(ctx context.Context, ref string) error {
	if err := validRef(ref); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ingests[ref]; ok {
		return fmt.Errorf("abort ingest %s: %w", ref, content.ErrUnavailable)
	}
	return fmt.Errorf("ingest %s: %w", ref, content.ErrNotFound)
}

type memSpan struct{ start, end int64 }

// memWriter is an ingest in memory.
type memWriter struct {
	m         *Memory
	ref       string
	startedAt time.Time

	mu        sync.Mutex
	data      []byte
	spans     []memSpan
	appendOff int64
	updatedAt time.Time
	dgst      digest.Digest
	done      bool
}

func (w *memWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	off := w.appendOff
	w.mu.Unlock()
	n, err := w.WriteAt(p, off)
	w.mu.Lock()
	w.appendOff = off + int64(n)
	w.mu.Unlock()
	return n, err
}

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || int64(len(p)) > math.MaxInt64-off || off+int64(len(p)) > 1<<40 {
		return 0, fmt.Errorf("ingest %s: write at %d: invalid offset", w.ref, off)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, fmt.Errorf("ingest %s: %w", w.ref, fs.ErrClosed)
	}
	end := off + int64(len(p))
	if end > int64(len(w.data)) {
		w.data = append(w.data, make([]byte, end-int64(len(w.data)))...)
	}
	copy(w.data[off:], p)
	if len(p) > 0 {
		w.spans = addMemSpan(w.spans, off, end)
	}
	w.updatedAt = time.Now()
	return len(p), nil
}

func addMemSpan(spans []memSpan, s, e int64) []memSpan {
	i := sort.Search(len(spans), func(i int) bool { return spans[i].end >= s })
	j := i
	for j < len(spans) && spans[j].start <= e {
		s, e = min(s, spans[j].start), max(e, spans[j].end)
		j++
	}
	return slices.Replace(spans, i, j, memSpan{s, e})
}

func (w *memWriter) ReadAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, fmt.Errorf("ingest %s: %w", w.ref, fs.ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("ingest %s: read at %d: invalid offset", w.ref, off)
	}
	if off >= int64(len(w.data)) {
		return 0, io.EOF
	}
	n := copy(p, w.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Sync has nothing to flush in memory; like a file, it fails once the
// writer has ended.
func (w *memWriter) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return fmt.Errorf("ingest %s: %w", w.ref, fs.ErrClosed)
	}
	return nil
}

func (w *memWriter) Digest() digest.Digest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dgst
}

func (w *memWriter) Status() (content.Status, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return content.Status{}, fmt.Errorf("ingest %s: %w", w.ref, content.ErrNotFound)
	}
	st := content.Status{Ref: w.ref, StartedAt: w.startedAt, UpdatedAt: w.updatedAt}
	for _, s := range w.spans {
		st.Written += s.end - s.start
	}
	if len(w.spans) > 0 && w.spans[0].start == 0 {
		st.Offset = w.spans[0].end
	}
	return st, nil
}

func (w *memWriter) Commit(ctx context.Context, size int64, expected digest.Digest) error {
	if expected != "" {
		if err := validDigest(expected); err != nil {
			return fmt.Errorf("commit %s: %w", w.ref, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return fmt.Errorf("ingest %s: %w", w.ref, fs.ErrClosed)
	}
	complete := size >= 0 && ((size == 0 && len(w.spans) == 0) ||
		(len(w.spans) == 1 && w.spans[0] == memSpan{0, size}))
	if !complete {
		w.end()
		return fmt.Errorf("commit %s: want %d bytes: %w", w.ref, size, content.ErrSizeMismatch)
	}
	data := w.data[:size:size]
	dgst := digest.SHA256.FromBytes(data)
	if expected != "" && dgst != expected {
		w.end()
		return fmt.Errorf("commit %s: got %s, want %s: %w", w.ref, dgst, expected, content.ErrDigestMismatch)
	}
	w.dgst = dgst
	w.end()
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if _, ok := w.m.blobs[dgst]; ok {
		return fmt.Errorf("commit %s: content %s: %w", w.ref, dgst, content.ErrAlreadyExists)
	}
	now := time.Now()
	w.m.blobs[dgst] = &memBlob{data: data, createdAt: now, accessedAt: now}
	return nil
}

// end marks the writer finished and releases its ref. w.mu must be held.
func (w *memWriter) end() {
	if w.done {
		return
	}
	w.done = true
	w.m.mu.Lock()
	if w.m.ingests[w.ref] == w {
		delete(w.m.ingests, w.ref)
	}
	w.m.mu.Unlock()
}

func (w *memWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.data = nil
	}
	w.end()
	return nil
}
