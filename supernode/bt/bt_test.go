package bt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/supernode/bt"
	"github.com/damselfly/damselfly/supernode/bt/bttest"
)

// policy is a test outbound policy: it refuses the addresses in deny.
type policy struct {
	mu    sync.Mutex
	deny  map[string]bool
	dials []string
}

func (p *policy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	p.mu.Lock()
	p.dials = append(p.dials, network+" "+addr)
	denied := p.deny[addr]
	p.mu.Unlock()
	if denied {
		return nil, fmt.Errorf("outbound policy: %s %s denied (test policy)", network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (p *policy) dialed() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.dials...)
}

// newClient builds a client whose every dial goes through a policy.
func newClient(t *testing.T, cfg bt.Config, p *policy) *bt.Client {
	t.Helper()
	if p == nil {
		p = &policy{}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: p.dial}}
	log := &endingLog{TestingT: t}
	t.Cleanup(log.end) // after Close below: cleanups run last first
	c, err := bt.New(cfg, bt.Options{Dial: p.dial, HTTPClient: hc, Logger: zaptest.NewLogger(log, zaptest.Level(zap.InfoLevel))})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	return c
}

// endingLog writes a client's log to its test until the test's cleanups
// have closed the client: the torrent library still logs from goroutines
// Close does not wait for (a tracker's "stopped" announce), and nothing may
// write to a test that has ended (the race detector flags it).
type endingLog struct {
	zaptest.TestingT
	mu    sync.RWMutex
	ended bool
}

func (l *endingLog) end() {
	l.mu.Lock()
	l.ended = true
	l.mu.Unlock()
}

func (l *endingLog) Logf(format string, args ...any) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if !l.ended {
		l.TestingT.Logf(format, args...)
	}
}

func (l *endingLog) Errorf(format string, args ...any) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if !l.ended {
		l.TestingT.Errorf(format, args...)
	}
}

// memSink collects a file's verified bytes and checks the Sink contract:
// every byte written once, Verified only after WriteAt.
type memSink struct {
	mu       sync.Mutex
	data     []byte
	written  []bool
	verified int64
	errs     []error
}

func newMemSink(n int64) *memSink {
	return &memSink{data: make([]byte, n), written: make([]bool, n)}
}

func (s *memSink) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(s.data)) {
		s.errs = append(s.errs, fmt.Errorf("write [%d, %d) outside the file", off, off+int64(len(p))))
		return 0, errors.New("out of range")
	}
	for i := range p {
		if s.written[off+int64(i)] {
			s.errs = append(s.errs, fmt.Errorf("byte %d written twice", off+int64(i)))
			break
		}
		s.written[off+int64(i)] = true
	}
	return copy(s.data[off:], p), nil
}

func (s *memSink) Verified(off, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := off; i < off+n; i++ {
		if !s.written[i] {
			s.errs = append(s.errs, fmt.Errorf("byte %d verified before written", i))
			break
		}
	}
	s.verified += n
}

func (s *memSink) check(t *testing.T, want []byte) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	require.Empty(t, s.errs)
	require.Equal(t, int64(len(want)), s.verified, "bytes verified")
	require.True(t, bytes.Equal(want, s.data), "sink bytes differ from the seeded file")
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func parse(t *testing.T, raw string) btlink.Link {
	l, err := btlink.Parse(raw)
	require.NoError(t, err)
	return l
}

func TestMagnetSingleFile(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	data := random(t, 12<<20)
	s := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "single.bin"})
	p := &policy{}
	c := newClient(t, bt.Config{}, p)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	start := time.Now()
	tor, err := c.Open(ctx, parse(t, s.Magnet))
	require.NoError(t, err)
	defer tor.Close()
	require.Equal(t, s.InfoHash, tor.InfoHash())
	require.Equal(t, "single.bin", tor.Name())
	require.Equal(t, []bt.File{{Path: "single.bin", Length: int64(len(data))}}, tor.Files())
	f, err := tor.File("")
	require.NoError(t, err)
	sink := newMemSink(f.Length)
	require.NoError(t, tor.Download(ctx, f, sink))
	elapsed := time.Since(start)
	sink.check(t, data)

	st := tor.Stats()
	up, err := s.UploadLength(ctx)
	require.NoError(t, err)
	t.Logf("%d MiB in %s; read %d bytes, seeder uploaded %d bytes", len(data)>>20, elapsed, st.BytesRead, up)
	require.Zero(t, st.BytesWritten, "leech-only client uploaded")
	require.GreaterOrEqual(t, up, int64(len(data)))
	require.Less(t, up, int64(len(data))*5/4, "seeder uploaded much more than one copy")
	for _, d := range p.dialed() {
		require.Equal(t, "tcp "+s.Addr, d, "dials go through the policy, to the seeder only")
	}
	require.NotEmpty(t, p.dialed())
}

func TestTorrentFileOverHTTP(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	data := random(t, 9<<20+12345)
	tr := bttest.NewTracker(t)
	s := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "file.bin", Announce: tr.URL})
	tr.SetPeers(s.Addr)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(s.Torrent) }))
	defer srv.Close()
	c := newClient(t, bt.Config{}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	tor, err := c.Open(ctx, parse(t, "torrent+"+srv.URL+"/file.torrent"))
	require.NoError(t, err)
	defer tor.Close()
	require.Equal(t, s.InfoHash, tor.InfoHash())
	f, err := tor.File("file.bin")
	require.NoError(t, err)
	sink := newMemSink(f.Length)
	require.NoError(t, tor.Download(ctx, f, sink))
	sink.check(t, data)
	require.Positive(t, tr.Announces(), "the tracker was asked")
}

func TestMultiFile(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	// Sizes not multiples of the piece length, so that pieces straddle files.
	files := map[string][]byte{
		"a.bin":     random(t, 3<<20+1000),
		"dir/b.bin": random(t, 2<<20+77777),
		"dir/c.bin": random(t, 4<<20+5),
	}
	s := bttest.Seed(t, files, bttest.SeedOptions{Name: "multi"})
	c := newClient(t, bt.Config{}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	tor, err := c.Open(ctx, parse(t, s.Magnet))
	require.NoError(t, err)
	defer tor.Close()
	require.ElementsMatch(t, []bt.File{
		{Path: "a.bin", Length: int64(len(files["a.bin"]))},
		{Path: "dir/b.bin", Length: int64(len(files["dir/b.bin"]))},
		{Path: "dir/c.bin", Length: int64(len(files["dir/c.bin"]))},
	}, tor.Files())
	_, err = tor.File("")
	require.ErrorIs(t, err, bt.ErrNotFound)
	require.ErrorContains(t, err, "has 3 files: a.bin, dir/b.bin, dir/c.bin")
	_, err = tor.File("nope")
	require.ErrorIs(t, err, bt.ErrNotFound)

	f, err := tor.File("dir/b.bin")
	require.NoError(t, err)
	sink := newMemSink(f.Length)
	require.NoError(t, tor.Download(ctx, f, sink))
	sink.check(t, files["dir/b.bin"])
	// Only b's pieces (plus the two it shares) were fetched: well under
	// the torrent's 9 MiB.
	read := tor.Stats().BytesRead
	t.Logf("read %d bytes for a file of %d", read, f.Length)
	require.Less(t, read, f.Length+2*(256<<10)+(256<<10))
	require.ErrorContains(t, tor.Download(ctx, f, newMemSink(f.Length)), "already downloaded")
}

func TestLyingSeeder(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	data := random(t, 4<<20)
	s := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "lie.bin", Corrupt: true})
	c := newClient(t, bt.Config{StallTimeout: 3 * time.Second}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// The info dict is intact (only the file was corrupted), so metadata
	// arrives; every piece fails its hash.
	tor, err := c.Open(ctx, parse(t, s.Magnet))
	require.NoError(t, err)
	defer tor.Close()
	f, err := tor.File("")
	require.NoError(t, err)
	sink := newMemSink(f.Length)
	err = tor.Download(ctx, f, sink)
	require.ErrorIs(t, err, bt.ErrStalled)
	t.Log(err)
	st := tor.Stats()
	t.Logf("stats %+v", st)
	require.Positive(t, st.PiecesFailed)
	require.ErrorContains(t, err, "failed their hash check")
	require.ErrorContains(t, err, "peers banned for bad data")
	// The liar is banned after its first bad piece (a link's peers must
	// not be trusted by anacrolix, or it downloads bad pieces forever).
	require.LessOrEqual(t, st.BytesRead, int64(4<<20), "bytes read from a lying seeder")
	sink.mu.Lock()
	defer sink.mu.Unlock()
	require.Zero(t, sink.verified)
	for i, w := range sink.written {
		require.False(t, w, "byte %d reached the sink", i)
	}
}

func TestCaps(t *testing.T) {
	t.Parallel()
	t.Run("torrent file size", func(t *testing.T) {
		t.Parallel()
		huge := bytes.Repeat([]byte("x"), 2<<20)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(huge) }))
		defer srv.Close()
		c := newClient(t, bt.Config{MaxMetadataSize: 1 << 20}, nil)
		_, err := c.Open(t.Context(), parse(t, "torrent+"+srv.URL+"/huge.torrent"))
		require.ErrorIs(t, err, bt.ErrTooLarge)
		require.ErrorContains(t, err, "maxMetadataSize")
	})
	t.Run("file count", func(t *testing.T) {
		t.Parallel()
		bttest.Require(t)
		files := map[string][]byte{}
		for i := range 5 {
			files[fmt.Sprintf("f%d", i)] = []byte{byte(i)}
		}
		s := bttest.Seed(t, files, bttest.SeedOptions{Name: "many"})
		c := newClient(t, bt.Config{MaxFiles: 4}, nil)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		_, err := c.Open(ctx, parse(t, s.Magnet))
		require.ErrorIs(t, err, bt.ErrTooLarge)
		require.ErrorContains(t, err, "5 files, more than bt.maxFiles 4")
		// The torrent was dropped: a client with room opens it.
		_, err = newClient(t, bt.Config{}, nil).Open(ctx, parse(t, s.Magnet))
		require.NoError(t, err)
	})
	t.Run("info size", func(t *testing.T) {
		t.Parallel()
		bttest.Require(t)
		s := bttest.Seed(t, map[string][]byte{"": random(t, 1<<20)}, bttest.SeedOptions{Name: "x", PieceLengthExp: 15})
		c := newClient(t, bt.Config{MaxMetadataSize: 100}, nil)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		_, err := c.Open(ctx, parse(t, s.Magnet))
		require.ErrorIs(t, err, bt.ErrTooLarge)
	})
}

func TestPolicyRefusal(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	data := random(t, 1<<20)
	s := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "p.bin"})
	p := &policy{deny: map[string]bool{s.Addr: true}}
	c := newClient(t, bt.Config{MetadataTimeout: 3 * time.Second, StallTimeout: 3 * time.Second}, p)

	t.Run("magnet", func(t *testing.T) {
		_, err := c.Open(t.Context(), parse(t, s.Magnet))
		require.ErrorIs(t, err, bt.ErrMetadataTimeout)
		require.ErrorContains(t, err, "outbound policy: tcp "+s.Addr+" denied")
	})
	t.Run("torrent file", func(t *testing.T) {
		tr := bttest.NewTracker(t)
		tr.SetPeers(s.Addr)
		// The seeder's own torrent has no tracker: serve one naming ours.
		mi := strings.Replace(string(s.Torrent), "d10:created by", fmt.Sprintf("d8:announce%d:%s10:created by", len(tr.URL), tr.URL), 1)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(mi)) }))
		defer srv.Close()
		tor, err := c.Open(t.Context(), parse(t, "torrent+"+srv.URL+"/p.torrent"))
		require.NoError(t, err)
		defer tor.Close()
		f, err := tor.File("")
		require.NoError(t, err)
		err = tor.Download(t.Context(), f, newMemSink(f.Length))
		require.ErrorIs(t, err, bt.ErrStalled)
		require.ErrorContains(t, err, "outbound policy: tcp "+s.Addr+" denied")
	})
}

func TestNoEndpoints(t *testing.T) {
	t.Parallel()
	c := newClient(t, bt.Config{}, nil)
	_, err := c.Open(t.Context(), parse(t, "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"))
	require.ErrorIs(t, err, bt.ErrNoEndpoints)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	cfg := bt.Config{}.ApplyDefaults()
	require.NoError(t, cfg.Validate())
	require.Empty(t, cfg.ListenAddr, "leech-only: no listening")
	require.Equal(t, ":0", bt.Config{Seed: true}.ApplyDefaults().ListenAddr)
	err := bt.Config{ListenAddr: ":6881", MaxFiles: -1, MaxMetadataSize: 32 << 20}.ApplyDefaults().Validate()
	require.ErrorContains(t, err, "bt.listen")
	require.ErrorContains(t, err, "bt.maxFiles")
	require.ErrorContains(t, err, "bt.maxMetadataSize")
}

// readerSink is a memSink that reads back, so a seeding client can upload
// what it verified.
type readerSink struct{ *memSink }

func (s readerSink) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off >= int64(len(s.data)) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestSeed(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	// b.bin straddles pieces shared with a.bin and c.bin (256 KiB pieces),
	// which the seeding client keeps whole to serve them.
	files := map[string][]byte{
		"a.bin": random(t, 300_000),
		"b.bin": random(t, 700_000),
		"c.bin": random(t, 200_000),
	}
	tr := bttest.NewTracker(t)
	s := bttest.Seed(t, files, bttest.SeedOptions{Name: "seed", Announce: tr.URL})
	tr.SetPeers(s.Addr)
	c := newClient(t, bt.Config{Seed: true, ListenAddr: "127.0.0.1:0"}, nil)
	addrs := c.ListenAddrs()
	require.Len(t, addrs, 1)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(s.Torrent) }))
	defer srv.Close()
	tor, err := c.Open(ctx, parse(t, "torrent+"+srv.URL+"/seed.torrent"))
	require.NoError(t, err)
	defer tor.Close()
	f, err := tor.File("b.bin")
	require.NoError(t, err)
	sink := readerSink{newMemSink(f.Length)}
	require.NoError(t, tor.Download(ctx, f, sink))
	sink.check(t, files["b.bin"])
	up1, err := s.UploadLength(ctx)
	require.NoError(t, err)

	// A second swarm member, told only of our client, gets b.bin from it.
	tr.SetPeers(addrs[0].String())
	dir, err := bttest.Leech(ctx, t, s.Torrent, 2)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(dir, "seed", "b.bin"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(files["b.bin"], got), "leecher's b.bin differs")
	up2, err := s.UploadLength(ctx)
	require.NoError(t, err)
	st := tor.Stats()
	t.Logf("our client uploaded %d bytes; the first seeder %d then %d", st.BytesWritten, up1, up2)
	require.GreaterOrEqual(t, st.BytesWritten, f.Length)
	require.Equal(t, up1, up2, "the leecher got nothing from the first seeder")
}

func TestListen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		cfg   bt.Config
		addrs int
	}{
		{name: "leech only", cfg: bt.Config{}, addrs: 0},
		{name: "seed", cfg: bt.Config{Seed: true, ListenAddr: "127.0.0.1:0"}, addrs: 1},
		{name: "seed with utp", cfg: bt.Config{Seed: true, UTP: true, ListenAddr: "127.0.0.1:0"}, addrs: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, tt.cfg, nil)
			require.Len(t, c.ListenAddrs(), tt.addrs)
		})
	}
}

func TestWebSeed(t *testing.T) {
	t.Parallel()
	bttest.Require(t)
	data := random(t, 3<<20+999)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "ws.bin", time.Time{}, bytes.NewReader(data))
	}))
	defer web.Close()
	// The seeder only makes the torrent; the client is never told of it.
	s := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "ws.bin", WebSeed: web.URL + "/ws.bin"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(s.Torrent) }))
	defer srv.Close()
	p := &policy{}
	c := newClient(t, bt.Config{}, p)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	tor, err := c.Open(ctx, parse(t, "torrent+"+srv.URL+"/ws.torrent"))
	require.NoError(t, err)
	defer tor.Close()
	f, err := tor.File("")
	require.NoError(t, err)
	sink := newMemSink(f.Length)
	start := time.Now()
	require.NoError(t, tor.Download(ctx, f, sink))
	t.Logf("%d bytes from the web seed in %s", f.Length, time.Since(start))
	sink.check(t, data)
	up, err := s.UploadLength(ctx)
	require.NoError(t, err)
	require.Zero(t, up, "the bytes came from the web seed")
	require.Contains(t, p.dialed(), "tcp "+strings.TrimPrefix(web.URL, "http://"), "the web seed is dialed through the policy")
}
