package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/piece"
)

// The floor of -mode stream: the same pull through two minimal relays that
// do only the work a verified two-hop pull cannot avoid, each a child
// process of the bench binary (-serve relay), so that the machine's ceiling
// is measured beside Damselfly's figures rather than argued. The first relay
// stands for the CDN: it reads the blob from the registry in 4 MiB pieces,
// hashes each piece and the whole content (two SHA-256 passes, on two
// goroutines), writes the pieces to a file with O_DIRECT and sends them on.
// The second stands for a node: it reads from the first, hashes each piece
// once, writes it with O_DIRECT and sends it to the hashing client. A relay
// asked again serves its finished file with sendfile and no hashing at all,
// from the page cache (the bench reads the file into it first, as the CDN's
// own copy is there): the least a held copy can cost. Asked with ?check=1, it
// instead hashes each piece of the file against the digest it computed
// while relaying before sending it (read from the page cache, sent from the
// buffer it was hashed in): the least a held copy costs under the CDN's
// check on serve (docs/ARCHITECTURE.md). There is no scheduler, no piece
// protocol, no metadata and no bound on anything: the relays are a
// yardstick, not a design.

// relayPieceSize is the relays' piece size, the size Damselfly's pieces of a
// large blob have.
const relayPieceSize = 4 << 20

// serveRelay runs one relay of -upstream, its file under -serve-dir; with
// -relay-hashes 2 it also checks the whole content against the digest named
// by the upstream URL's last path element.
func serveRelay(ctx context.Context, o options) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.upstream == "" || o.serveDir == "" {
		return errors.New("-serve relay needs -upstream and -serve-dir")
	}
	r := &relay{upstream: o.upstream, whole: o.relayHashes > 1, path: filepath.Join(o.serveDir, "blob")}
	if r.whole {
		d, err := digest.Parse(filepath.Base(o.upstream))
		if err != nil {
			return fmt.Errorf("-relay-hashes 2: the upstream URL must end in the blob's digest: %w", err)
		}
		r.want = d
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /blob", r.serve)
	return serveChild(ctx, o.serveAddr, mux, func(addr string) readyLine { return readyLine{URL: "http://" + addr + "/blob"} })
}

type relay struct {
	upstream string
	whole    bool
	want     digest.Digest
	path     string

	mu     sync.Mutex
	done   bool            // the file holds the whole blob
	pieces []digest.Digest // of the file's pieces, once done
}

func (r *relay) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock() // one pull at a time: a yardstick
	if r.done {
		if req.URL.Query().Get("check") == "" {
			http.ServeFile(w, req, r.path) // sendfile from the kept copy
			return
		}
		if err := r.serveChecked(w); err != nil {
			fmt.Fprintf(os.Stderr, "relay: %v\n", err)
			panic(http.ErrAbortHandler)
		}
		return
	}
	if err := r.relay(req.Context(), w); err != nil {
		fmt.Fprintf(os.Stderr, "relay: %v\n", err)
		panic(http.ErrAbortHandler) // the response is cut
	}
	r.done = true
}

// relay copies the upstream body to w and to the file, piece by piece.
func (r *relay) relay(ctx context.Context, w http.ResponseWriter) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.upstream, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		return fmt.Errorf("GET %s: %s, length %d", r.upstream, resp.Status, resp.ContentLength)
	}
	direct, buffered, err := openRelayFile(r.path)
	if err != nil {
		return err
	}
	defer direct.Close()
	defer buffered.Close()

	// Three stages on their own goroutines, each a piece ahead of the
	// next: read, hash, then write and send.
	type chunk struct {
		p   []byte
		err error
	}
	const buffers = 4
	free := make(chan []byte, buffers)
	for range buffers {
		free <- piece.Buffer(relayPieceSize)
	}
	read := make(chan chunk, 1)
	go func() {
		defer close(read)
		for {
			buf := <-free
			n, err := io.ReadFull(resp.Body, buf)
			if n > 0 {
				read <- chunk{p: buf[:n]}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					read <- chunk{err: err}
				}
				return
			}
		}
	}()
	content := sha256.New()
	hashed := make(chan chunk, 1)
	var pieces []digest.Digest
	go func() {
		defer close(hashed)
		for c := range read {
			if c.err == nil {
				var wg sync.WaitGroup
				wg.Go(func() { pieces = append(pieces, piece.Digest(c.p)) })
				if r.whole {
					wg.Go(func() { content.Write(c.p) })
				}
				wg.Wait()
			}
			hashed <- c
		}
	}()
	defer func() {
		// On an early return the reader stops at the closed body; the
		// stages end once their buffers are given back.
		resp.Body.Close()
		for c := range hashed {
			if c.p != nil {
				free <- c.p[:cap(c.p)]
			}
		}
	}()

	w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	w.WriteHeader(http.StatusOK)
	var off int64
	for c := range hashed {
		if c.err != nil {
			return c.err
		}
		// Aligned pieces go around the page cache; the last, short one
		// through it.
		f := direct
		if len(c.p)%4096 != 0 {
			f = buffered
		}
		if _, err := f.WriteAt(c.p, off); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if _, err := w.Write(c.p); err != nil {
			return err
		}
		off += int64(len(c.p))
		free <- c.p[:cap(c.p)]
	}
	if off != resp.ContentLength {
		return fmt.Errorf("upstream sent %d of %d bytes", off, resp.ContentLength)
	}
	if r.whole {
		if got := digest.NewDigest(digest.SHA256, content); got != r.want {
			return fmt.Errorf("content %s, want %s", got, r.want)
		}
	}
	r.pieces = pieces // the hashing stage has ended: hashed is drained
	return buffered.Sync()
}

// serveChecked sends the kept file piece by piece, each read into a buffer
// and hashed against its digest before any of its bytes is sent.
func (r *relay) serveChecked(w http.ResponseWriter) error {
	f, err := os.Open(r.path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
	buf := piece.Buffer(relayPieceSize)
	for i, want := range r.pieces {
		n, err := f.ReadAt(buf, int64(i)*relayPieceSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if got := piece.Digest(buf[:n]); got != want {
			return fmt.Errorf("piece %d: %s, want %s", i, got, want)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
	}
	return nil
}

// openRelayFile opens path for direct writes and for buffered ones; where
// the filesystem refuses O_DIRECT both are buffered.
func openRelayFile(path string) (direct, buffered *os.File, err error) {
	buffered, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, err
	}
	direct, err = os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		if direct, err = os.OpenFile(path, os.O_WRONLY, 0); err != nil {
			_ = buffered.Close()
			return nil, nil, err
		}
	}
	return direct, buffered, nil
}

// floorResult is one round of the floor: the cold pull through both relays
// and a pull through a third relay from the first one's kept copy, with the
// relays' CPU time.
type floorResult struct {
	cold, held, checked          time.Duration
	coldCPU, heldCPU, checkedCPU [2]time.Duration
}

// floorRound runs the relays under dir for one round.
func floorRound(ctx context.Context, dir, blobURL string, layer digest.Digest) (res floorResult, err error) {
	defer os.RemoveAll(dir)
	start := func(name, upstream string, hashes int) (*proc, string, error) {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, "", err
		}
		p, rl, err := startChild(ctx, name, "-serve", "relay", "-upstream", upstream, "-serve-dir", d, "-relay-hashes", strconv.Itoa(hashes))
		if err != nil {
			return nil, "", err
		}
		return p, rl.URL, nil
	}
	cdn, cdnURL, err := start("relay-cdn", blobURL, 2)
	if err != nil {
		return res, err
	}
	defer cdn.stop()
	pull := func(label, query string) (time.Duration, [2]time.Duration, error) {
		node, nodeURL, err := start("relay-node", cdnURL+query, 1)
		if err != nil {
			return 0, [2]time.Duration{}, err
		}
		defer node.stop()
		cpu0, err := cpuTimes(cdn, node)
		if err != nil {
			return 0, cpu0, err
		}
		took, err := timedPull(ctx, label, nodeURL, layer)
		if err != nil {
			return 0, cpu0, fmt.Errorf("%w\n%s\n%s", err, cdn.stderr.String(), node.stderr.String())
		}
		cpu, err := cpuTimes(cdn, node)
		cpu[0] -= cpu0[0]
		cpu[1] -= cpu0[1]
		return took, cpu, err
	}
	if res.cold, res.coldCPU, err = pull("floor, cold", ""); err != nil {
		return res, err
	}
	// The relay's copy, written around the page cache, is read into it
	// first, outside the measure: the held-copy floors start from memory,
	// the least a held copy can cost (Damselfly's CDN, which writes around
	// the page cache too, reads its copy from the disk).
	if err := readAll(filepath.Join(dir, "relay-cdn", "blob")); err != nil {
		return res, err
	}
	if res.held, res.heldCPU, err = pull("floor, held copy", ""); err != nil {
		return res, err
	}
	res.checked, res.checkedCPU, err = pull("floor, held, checked", "?check=1")
	return res, err
}

// readAll reads the file at path to its end.
func readAll(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}
