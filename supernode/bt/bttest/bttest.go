// Package bttest runs a real BitTorrent seeder for tests: aria2c seeding
// files made into a torrent by mktorrent, on a free loopback port, with its
// JSON-RPC on to read what it uploaded; and a minimal HTTP tracker. Tests
// skip when aria2c or mktorrent is missing (Debian: apt-get install aria2
// mktorrent).
package bttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
)

// Require skips t when aria2c or mktorrent is not installed.
func Require(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"aria2c", "mktorrent"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("bttest: %s not found (apt-get install aria2 mktorrent): a real seeder is needed", bin)
		}
	}
}

// SeedOptions shape a seeder.
type SeedOptions struct {
	// Name is the torrent's name: the file of a single-file torrent, the
	// folder of a multi-file one (default "data").
	Name string
	// PieceLengthExp is log2 of the piece length (default 18: 256 KiB).
	PieceLengthExp int
	// Announce is a tracker URL to put in the torrent (none by default).
	Announce string
	// WebSeed is a web seed URL to put in the torrent (none by default).
	WebSeed string
	// Corrupt flips a byte in every 64 KiB of every file after the torrent
	// is made: the seeder serves pieces that fail their hash (it is started
	// without verifying its files).
	Corrupt bool
}

// Seeder is a running aria2c seeding one torrent.
type Seeder struct {
	// Dir holds the seeded data (Dir/Name).
	Dir string
	// Addr is the seeder's peer address, 127.0.0.1:port.
	Addr string
	// Torrent is the .torrent file; InfoHash its v1 info-hash, 40 hex.
	Torrent  []byte
	InfoHash string
	// Magnet names the torrent and the seeder as its only peer (x.pe),
	// without trackers.
	Magnet string

	rpc string
}

// Seed starts aria2c seeding a torrent of files: one file named "" makes
// a single-file torrent named opts.Name; otherwise the keys are
// slash-separated paths inside the torrent's folder. The seeder stops when
// t ends.
func Seed(t testing.TB, files map[string][]byte, opts SeedOptions) *Seeder {
	t.Helper()
	Require(t)
	if opts.Name == "" {
		opts.Name = "data"
	}
	if opts.PieceLengthExp == 0 {
		opts.PieceLengthExp = 18
	}
	dir := t.TempDir()
	root := filepath.Join(dir, opts.Name)
	if data, ok := files[""]; ok {
		if len(files) != 1 {
			t.Fatal("bttest: a file named \"\" must be the only one")
		}
		write(t, root, data)
	} else {
		for p, data := range files {
			write(t, filepath.Join(root, filepath.FromSlash(p)), data)
		}
	}
	tf := filepath.Join(t.TempDir(), "t.torrent")
	args := []string{"-d", "-l", strconv.Itoa(opts.PieceLengthExp), "-o", tf}
	if opts.Announce != "" {
		args = append(args, "-a", opts.Announce)
	}
	if opts.WebSeed != "" {
		args = append(args, "-w", opts.WebSeed)
	}
	args = append(args, root)
	if out, err := exec.Command("mktorrent", args...).CombinedOutput(); err != nil {
		t.Fatalf("bttest: mktorrent: %v\n%s", err, out)
	}
	torrent, err := os.ReadFile(tf)
	if err != nil {
		t.Fatal(err)
	}
	mi, err := metainfo.Load(bytes.NewReader(torrent))
	if err != nil {
		t.Fatalf("bttest: mktorrent's torrent: %v", err)
	}
	ih := mi.HashInfoBytes().HexString()
	if opts.Corrupt {
		corrupt(t, root)
	}

	port, rpcPort := freePort(t), freePort(t)
	aargs := []string{
		"--seed-ratio=0.0", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
		"--enable-peer-exchange=false", "--listen-port=" + strconv.Itoa(port),
		"--enable-rpc", "--rpc-listen-port=" + strconv.Itoa(rpcPort), "--rpc-listen-all=false",
		"--file-allocation=none", "--console-log-level=warn", "--summary-interval=0",
		"--bt-stop-timeout=0", "--auto-save-interval=0", "--dir=" + dir,
	}
	if opts.Corrupt {
		aargs = append(aargs, "--bt-seed-unverified=true")
	} else {
		aargs = append(aargs, "--check-integrity=true")
	}
	aargs = append(aargs, tf)
	cmd := exec.Command("aria2c", aargs...)
	var logBuf syncBuffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatalf("bttest: start aria2c: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("aria2c output:\n%s", logBuf.String())
		}
	})
	s := &Seeder{
		Dir:      dir,
		Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Torrent:  torrent,
		InfoHash: ih,
		Magnet:   fmt.Sprintf("magnet:?xt=urn:btih:%s&dn=%s&x.pe=127.0.0.1:%d", ih, opts.Name, port),
		rpc:      fmt.Sprintf("http://127.0.0.1:%d/jsonrpc", rpcPort),
	}
	// Wait until it seeds: its torrent is active and complete.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		st, err := s.status(ctx)
		if err == nil && st.Seeder == "true" {
			break
		}
		select {
		case <-done:
			t.Fatalf("bttest: aria2c exited:\n%s", logBuf.String())
		case <-ctx.Done():
			t.Fatalf("bttest: aria2c not seeding after 30s (last: %+v, %v):\n%s", st, err, logBuf.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return s
}

// Leech runs aria2c to download torrent (its peers come from its trackers
// only: no DHT, no peer exchange) into a new folder and returns the folder
// once aria2c is done. selectFile, when not 0, downloads only that file
// (1-based, in torrent order).
func Leech(ctx context.Context, t testing.TB, torrent []byte, selectFile int) (string, error) {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	tf := filepath.Join(t.TempDir(), "leech.torrent")
	if err := os.WriteFile(tf, torrent, 0o644); err != nil {
		return "", err
	}
	args := []string{
		"--seed-time=0", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
		"--enable-peer-exchange=false", "--listen-port=" + strconv.Itoa(freePort(t)),
		"--file-allocation=none", "--console-log-level=warn", "--summary-interval=0",
		"--dir=" + dir,
	}
	if selectFile != 0 {
		args = append(args, "--select-file="+strconv.Itoa(selectFile))
	}
	args = append(args, tf)
	out, err := exec.CommandContext(ctx, "aria2c", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("aria2c leech: %w\n%s", err, out)
	}
	return dir, nil
}

// UploadLength is the bytes the seeder has uploaded of its torrent.
func (s *Seeder) UploadLength(ctx context.Context) (int64, error) {
	st, err := s.status(ctx)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(st.UploadLength, 10, 64)
}

// rpcStatus is the part of aria2.tellActive's answer used here.
type rpcStatus struct {
	InfoHash        string `json:"infoHash"`
	Seeder          string `json:"seeder"`
	UploadLength    string `json:"uploadLength"`
	CompletedLength string `json:"completedLength"`
	TotalLength     string `json:"totalLength"`
}

// status asks the seeder's JSON-RPC for its torrent's status.
func (s *Seeder) status(ctx context.Context) (rpcStatus, error) {
	body, _ := json.Marshal(map[string]any{
		"jsonrpc": "2.0", "id": "bttest", "method": "aria2.tellActive",
		"params": []any{[]string{"infoHash", "seeder", "uploadLength", "completedLength", "totalLength"}},
	})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.rpc, bytes.NewReader(body))
	if err != nil {
		return rpcStatus{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rpcStatus{}, err
	}
	defer resp.Body.Close()
	var out struct {
		Result []rpcStatus `json:"result"`
		Error  *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return rpcStatus{}, fmt.Errorf("aria2 rpc: %w", err)
	}
	if out.Error != nil {
		return rpcStatus{}, fmt.Errorf("aria2 rpc: %s", out.Error.Message)
	}
	for _, st := range out.Result {
		if strings.EqualFold(st.InfoHash, s.InfoHash) {
			return st, nil
		}
	}
	return rpcStatus{}, fmt.Errorf("aria2 rpc: torrent %s not active", s.InfoHash)
}

// Tracker is a minimal HTTP tracker (BEP 3, compact BEP 23 answers) that
// hands out the peers it is told.
type Tracker struct {
	// URL is the announce URL.
	URL string

	mu    sync.Mutex
	peers []string
	hits  int
}

// NewTracker starts a tracker on loopback, stopped when t ends.
func NewTracker(t testing.TB) *Tracker {
	tr := &Tracker{}
	srv := httptest.NewServer(http.HandlerFunc(tr.announce))
	t.Cleanup(srv.Close)
	tr.URL = srv.URL + "/announce"
	return tr
}

// SetPeers sets the peers (IPv4 host:port) every announce gets.
func (tr *Tracker) SetPeers(addrs ...string) {
	tr.mu.Lock()
	tr.peers = addrs
	tr.mu.Unlock()
}

// Announces counts the announces received.
func (tr *Tracker) Announces() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.hits
}

func (tr *Tracker) announce(w http.ResponseWriter, r *http.Request) {
	tr.mu.Lock()
	tr.hits++
	peers := tr.peers
	tr.mu.Unlock()
	var compact []byte
	for _, p := range peers {
		ap, err := netipAddrPort(p)
		if err != nil {
			continue
		}
		compact = append(compact, ap...)
	}
	fmt.Fprintf(w, "d8:intervali60e5:peers%d:%se", len(compact), compact)
}

// netipAddrPort renders an IPv4 host:port as 6 compact bytes.
func netipAddrPort(addr string) ([]byte, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host).To4()
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil {
		return nil, fmt.Errorf("not an ipv4 host:port: %q", addr)
	}
	return append(ip, byte(p>>8), byte(p)), nil
}

func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// corrupt flips a byte in every 64 KiB of every file under root.
func corrupt(t testing.TB, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i := 0; i < len(b); i += 64 << 10 {
			b[i] ^= 0xff
		}
		return os.WriteFile(path, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// freePort returns a loopback TCP port free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for aria2c's two output streams.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
