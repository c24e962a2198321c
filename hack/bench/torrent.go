package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/damselfly/damselfly/pkg/clusterauth"
)

// The torrent suite (issue 15): one file seeded by aria2c with a capped
// upload, pulled by N nodes two ways, one round after the other:
//
//   - A (Damselfly): a supernode and N dfgets at once on a magnet link that
//     names the seeder (x.pe). The supernode's BitTorrent client fetches the
//     torrent from the seeder; the dfgets get it from the supernode and from
//     each other.
//   - B (BitTorrent): N aria2c leechers at once on the .torrent file, whose
//     tracker (a minimal one in this process) hands out the seeder and every
//     leecher that announced, so the leechers trade pieces among
//     themselves (peer exchange on, DHT and LPD off). A leecher keeps
//     seeding until the round ends.
//
// Each round has a fresh seeder, so its upload counter starts at 0. The
// seeder's cap is the bottleneck both rounds share: on loopback nothing
// else limits, and the cap stands for a remote seeder's uplink.

// torrentPieceExp is log2 of the torrent's piece length: 1 MiB, the usual
// piece for a torrent of about a GiB (1024 pieces at 1 GiB; 256 KiB would
// mean 4096 pieces and four times the hashing and request overhead).
const torrentPieceExp = 20

// torrentRun is one run's shared state.
type torrentRun struct {
	o       options
	work    string
	file    string // the seeded file
	name    string // its name in the torrent
	torrent string // the .torrent file
	size    int64
	sum     string // sha256 hex of the file
	tracker *miniTracker
	notes   []string
}

func (r *torrentRun) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	r.notes = append(r.notes, n)
	fmt.Println("  note:", n)
}

// roundResult is what one round measured.
type roundResult struct {
	done     []time.Duration // completion time of each client; -1 if it failed
	right    int             // outputs whose sha256 is the file's
	upload   int64           // the seeder's uploadLength at the end of the round
	oneCopy  time.Duration   // when the seeder had uploaded one copy; -1: never
	cpu      []cpuRow        // CPU seconds of the round's processes
	failures []string
}

type cpuRow struct {
	name string
	cpu  time.Duration
}

// finished returns the completion times of the clients that finished, in
// seconds.
func (rr roundResult) finished() []float64 {
	var out []float64
	for _, d := range rr.done {
		if d >= 0 {
			out = append(out, d.Seconds())
		}
	}
	return out
}

// runTorrent is the torrent suite.
func runTorrent(ctx context.Context, o options, work string, n int) error {
	if o.sizeMiB < 1 || n < 1 || o.seedRate <= 0 {
		return errors.New("-size, -n and -seed-rate must be positive")
	}
	// An interrupt ends the run through the deferred stops: no aria2c,
	// supernode or dfget outlives it.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := ensureTorrentTools(ctx); err != nil {
		return err
	}
	r := &torrentRun{o: o, work: work, name: "bench.bin", size: int64(o.sizeMiB) * mib}
	r.file = filepath.Join(work, "seed", r.name)
	fmt.Printf("writing a %d MiB file of random bytes...\n", o.sizeMiB)
	var err error
	if r.sum, err = writeRandomFile(r.file, r.size); err != nil {
		return err
	}
	if r.tracker, err = startMiniTracker(); err != nil {
		return err
	}
	defer r.tracker.close()
	r.torrent = filepath.Join(work, "bench.torrent")
	out, err := exec.CommandContext(ctx, "mktorrent", "-l", strconv.Itoa(torrentPieceExp), "-a", r.tracker.url, "-o", r.torrent, r.file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mktorrent: %w\n%s", err, out)
	}
	oneCopy := float64(r.size) / float64(o.seedRate)
	fmt.Printf("torrent: %d MiB, 1 MiB pieces; seeder aria2c capped at %s/s (%.1f MB/s): one copy takes %.1fs at the cap; N = %d\n\n",
		o.sizeMiB, o.seedRate, float64(o.seedRate)/1e6, oneCopy, n)

	fmt.Printf("A. Damselfly: a supernode and %d dfgets at once on the magnet link\n", n)
	a, err := r.roundDamselfly(ctx, n)
	if err != nil {
		return fmt.Errorf("round A: %w", err)
	}
	r.printRound(a)
	fmt.Printf("B. BitTorrent: %d aria2c leechers at once on the .torrent (tracker: the seeder and each other)\n", n)
	b, err := r.roundAria2(ctx, n)
	if err != nil {
		return fmt.Errorf("round B: %w", err)
	}
	r.printRound(b)

	tables := torrentTables(r.size, int64(o.seedRate), n, a, b)
	fmt.Println()
	for _, t := range tables {
		t.writeText(os.Stdout)
		fmt.Println()
	}
	if len(r.notes) > 0 {
		fmt.Println("notes:")
		for _, n := range r.notes {
			fmt.Println("  -", n)
		}
	}
	if o.markdown != "" {
		var sb strings.Builder
		for _, t := range tables {
			sb.WriteString(t.markdown())
			sb.WriteString("\n")
		}
		for _, n := range r.notes {
			fmt.Fprintf(&sb, "- %s\n", n)
		}
		if err := os.WriteFile(o.markdown, []byte(sb.String()), 0o644); err != nil {
			return err
		}
		fmt.Println("wrote", o.markdown)
	}
	if fails := len(a.failures) + len(b.failures); fails > 0 {
		return fmt.Errorf("%d clients failed or got wrong bytes", fails)
	}
	return nil
}

func (r *torrentRun) printRound(rr roundResult) {
	for i, d := range rr.done {
		if d >= 0 {
			fmt.Printf("  client %d: %.2fs\n", i+1, d.Seconds())
		}
	}
	for _, f := range rr.failures {
		fmt.Println("  FAILED:", f)
	}
	fmt.Printf("  seeder uploaded %d bytes (%.3f copies; the first copy's bytes by %s); %d/%d outputs' sha256 right\n\n",
		rr.upload, float64(rr.upload)/float64(r.size), fmtDur(rr.oneCopy), rr.right, len(rr.done))
}

// roundTimeout bounds one round: N copies at the seeder's cap, three times
// over, plus two minutes.
func (r *torrentRun) roundTimeout(n int) time.Duration {
	return time.Duration(3*float64(n)*float64(r.size)/float64(r.o.seedRate)*float64(time.Second)) + 2*time.Minute
}

// roundDamselfly is round A.
func (r *torrentRun) roundDamselfly(ctx context.Context, n int) (roundResult, error) {
	dir := filepath.Join(r.work, "damselfly")
	seed, err := r.startSeeder(ctx, "seeder-a")
	if err != nil {
		return roundResult{}, err
	}
	defer seed.kill()
	sn, snAddrs, err := startOnFreePorts(ctx, r.o, "supernode", 1, func(a []string) (string, []string) {
		return "http://" + a[0] + "/healthz", []string{"--listen", a[0], "--data-dir", filepath.Join(dir, "supernode"),
			"--admin-token", "bench", "--log-level", "warn", "--source-allow", "127.0.0.1/32"}
	})
	if err != nil {
		return roundResult{}, err
	}
	defer sn.stop()
	magnet := fmt.Sprintf("magnet:?xt=urn:btih:%s&dn=%s&x.pe=%s", seed.infoHash, r.name, seed.addr)

	rctx, cancel := context.WithTimeout(ctx, r.roundTimeout(n))
	defer cancel()
	snCPU0, _ := sn.cpuTime()
	seedCPU0, _ := seed.cpuTime()
	rr := roundResult{done: make([]time.Duration, n)}
	outs := make([]string, n)
	procs := make([]*exec.Cmd, n)
	errs := make([]error, n)
	stderrs := make([]*lockedBuffer, n)
	var wg sync.WaitGroup
	start := time.Now()
	copyAt := seed.watchUpload(rctx, start, r.size)
	for i := range n {
		outs[i] = filepath.Join(dir, fmt.Sprintf("node-%d", i+1), r.name)
		if err := os.MkdirAll(filepath.Dir(outs[i]), 0o755); err != nil {
			return rr, err
		}
		stderrs[i] = &lockedBuffer{}
		cmd := exec.CommandContext(rctx, filepath.Join(r.o.binDir, "dfget"), "-u", magnet, "-o", outs[i], "--node", snAddrs[0],
			"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1", "--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
			"--log-level", "warn", "--quiet")
		cmd.Env = append(os.Environ(), clusterauth.EnvToken+"="+clusterToken)
		cmd.Stdout, cmd.Stderr = stderrs[i], stderrs[i]
		procs[i] = cmd
		if err := cmd.Start(); err != nil {
			return rr, fmt.Errorf("start dfget: %w", err)
		}
		wg.Go(func() {
			errs[i] = cmd.Wait()
			rr.done[i] = time.Since(start)
		})
	}
	wg.Wait()
	rr.oneCopy = copyAt()
	snCPU1, _ := sn.cpuTime()
	seedCPU1, _ := seed.cpuTime()
	// The counters are read even when the run's time ran out.
	if rr.upload, err = seed.uploadLength(context.WithoutCancel(ctx)); err != nil {
		r.note("round A: the seeder's uploadLength: %v", err)
	}
	var dfgetCPU time.Duration
	for i, cmd := range procs {
		if cmd.ProcessState != nil {
			dfgetCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		if errs[i] != nil {
			rr.done[i] = -1
			why := errs[i].Error()
			if rctx.Err() != nil {
				why = cutShort(ctx) + " (" + why + ")"
			}
			rr.failures = append(rr.failures, fmt.Sprintf("dfget %d: %s: %.1500s", i+1, why, stderrs[i].String()))
		}
	}
	rr.right, rr.failures = r.checkOutputs(outs, rr.done, rr.failures)
	rr.cpu = []cpuRow{
		{"supernode (its BitTorrent client, the CDN)", snCPU1 - snCPU0},
		{fmt.Sprintf("%d dfgets, together", n), dfgetCPU},
		{"seeder (aria2c)", seedCPU1 - seedCPU0},
	}
	select {
	case <-sn.exited:
		r.note("round A: the supernode exited during the round (%v): %.1500s", sn.waitErr, sn.stderr.String())
	default:
	}
	return rr, nil
}

// roundAria2 is round B.
func (r *torrentRun) roundAria2(ctx context.Context, n int) (roundResult, error) {
	dir := filepath.Join(r.work, "aria2")
	r.tracker.reset()
	seed, err := r.startSeeder(ctx, "seeder-b")
	if err != nil {
		return roundResult{}, err
	}
	defer seed.kill()
	r.tracker.add(seed.addr)

	rctx, cancel := context.WithTimeout(ctx, r.roundTimeout(n))
	defer cancel()
	seedCPU0, _ := seed.cpuTime()
	rr := roundResult{done: make([]time.Duration, n)}
	outs := make([]string, n)
	leechers := make([]*aria2, n)
	defer func() {
		for _, l := range leechers {
			if l != nil {
				l.kill()
			}
		}
	}()
	start := time.Now()
	copyAt := seed.watchUpload(rctx, start, r.size)
	for i := range n {
		ldir := filepath.Join(dir, fmt.Sprintf("node-%d", i+1))
		outs[i] = filepath.Join(ldir, r.name)
		l, err := startAria2(ctx, fmt.Sprintf("leecher-%d", i+1), ldir,
			"--seed-ratio=0.0", "--enable-peer-exchange=true", "--bt-tracker-interval=5", r.torrent)
		if err != nil {
			return rr, err
		}
		leechers[i] = l
	}
	// A leecher is done once it seeds: every piece verified. It goes on
	// seeding to the others until the round ends.
	var wg sync.WaitGroup
	for i, l := range leechers {
		wg.Go(func() {
			rr.done[i] = -1
			var idle time.Time // since when it has had no active download
			for {
				st, err := l.status(rctx)
				if err == nil && st.Seeder == "true" {
					rr.done[i] = time.Since(start)
					return
				}
				// A torrent aria2c gave up on (say, its peer port taken)
				// leaves the active list: that leecher is done for.
				if errors.Is(err, errNoActive) {
					if idle.IsZero() {
						idle = time.Now()
					} else if time.Since(idle) > 10*time.Second {
						l.gaveUp = true
						return
					}
				} else {
					idle = time.Time{}
				}
				select {
				case <-l.exited:
					return
				case <-rctx.Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	rr.oneCopy = copyAt()
	seedCPU1, _ := seed.cpuTime()
	if rr.upload, err = seed.uploadLength(context.WithoutCancel(ctx)); err != nil {
		r.note("round B: the seeder's uploadLength: %v", err)
	}
	var leechCPU time.Duration
	var leechUp int64
	for i, l := range leechers {
		if up, err := l.uploadLength(context.WithoutCancel(ctx)); err == nil {
			leechUp += up
		}
		why := cutShort(ctx)
		select {
		case <-l.exited:
			why = fmt.Sprintf("it exited: %v", l.waitErr)
		default:
			if l.gaveUp {
				why = "its torrent left aria2c's active list: " + l.stopped(context.WithoutCancel(ctx))
			}
		}
		l.kill()
		if l.cmd.ProcessState != nil {
			leechCPU += l.cmd.ProcessState.UserTime() + l.cmd.ProcessState.SystemTime()
		}
		if rr.done[i] < 0 {
			rr.failures = append(rr.failures, fmt.Sprintf("leecher %d did not finish (%s): %.1500s", i+1, why, l.stderr.String()))
		}
	}
	fmt.Printf("  the leechers uploaded %d bytes to each other (%.2f copies)\n", leechUp, float64(leechUp)/float64(r.size))
	rr.right, rr.failures = r.checkOutputs(outs, rr.done, rr.failures)
	rr.cpu = []cpuRow{
		{fmt.Sprintf("%d aria2c leechers, together (seeding until the round ended)", n), leechCPU},
		{"seeder (aria2c)", seedCPU1 - seedCPU0},
	}
	return rr, nil
}

// cutShort says why a round ended before its clients did, given the
// run's context.
func cutShort(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.Canceled) {
		return "interrupted"
	}
	return "the round's time ran out"
}

// checkOutputs compares the sha256 of each finished client's output with
// the file's.
func (r *torrentRun) checkOutputs(outs []string, done []time.Duration, failures []string) (int, []string) {
	right := 0
	for i, out := range outs {
		if done[i] < 0 {
			continue
		}
		sum, err := fileSHA256(out)
		switch {
		case err != nil:
			failures = append(failures, fmt.Sprintf("client %d: %v", i+1, err))
		case sum != r.sum:
			failures = append(failures, fmt.Sprintf("client %d: sha256 %s, want %s", i+1, sum, r.sum))
		default:
			right++
		}
	}
	return right, failures
}

// torrentTables builds the side-by-side table and the CPU table.
func torrentTables(size, seedRate int64, n int, a, b roundResult) []*table {
	oneCopy := float64(size) / float64(seedRate)
	t := &table{title: fmt.Sprintf("%d nodes pull a %.0f MiB torrent from one aria2c seeder capped at %.1f MB/s (one copy at the cap: %.1fs)", n, float64(size)/mib, float64(seedRate)/1e6, oneCopy),
		header: []string{"", fmt.Sprintf("Damselfly (supernode + %d dfget)", n), fmt.Sprintf("BitTorrent (%d aria2c)", n), "Damselfly / BitTorrent"}}
	fa, fb := a.finished(), b.finished()
	stat := func(name string, agg func([]float64) float64) {
		if len(fa) == 0 || len(fb) == 0 {
			t.add(name, fmtSecs(fa, agg), fmtSecs(fb, agg), "-")
			return
		}
		t.add(name, fmtSec(agg(fa)), fmtSec(agg(fb)), fmtRatio(agg(fa), agg(fb)))
	}
	stat("completion, median", median)
	stat("completion, max", maxOf)
	t.add("finished, sha256 right", fmt.Sprintf("%d/%d", a.right, len(a.done)), fmt.Sprintf("%d/%d", b.right, len(b.done)), "")
	t.add("seeder upload (MiB)", fmt.Sprintf("%.1f", float64(a.upload)/mib), fmt.Sprintf("%.1f", float64(b.upload)/mib), fmtRatio(float64(a.upload), float64(b.upload)))
	t.add("seeder had sent one copy's bytes by", fmtDur(a.oneCopy), fmtDur(b.oneCopy), "")
	t.add("seeder upload (copies)", fmt.Sprintf("%.3f", float64(a.upload)/float64(size)), fmt.Sprintf("%.3f", float64(b.upload)/float64(size)), "")

	c := &table{title: "CPU of each round (user+sys, /proc; 2 cores shared by every process of the round)", header: []string{"round", "process", "CPU s", "CPU s / GiB delivered"}}
	gib := float64(size) * float64(n) / (1 << 30)
	for _, rr := range []struct {
		name string
		res  roundResult
	}{{"A. Damselfly", a}, {"B. BitTorrent", b}} {
		for _, row := range rr.res.cpu {
			c.add(rr.name, row.name, fmt.Sprintf("%.2f", row.cpu.Seconds()), fmt.Sprintf("%.2f", row.cpu.Seconds()/gib))
		}
	}
	return []*table{t, c}
}

// fmtDur formats d in seconds, or "-" for a negative d.
func fmtDur(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return fmtSec(d.Seconds())
}

// watchUpload polls the seeder's upload counter from start until ctx ends
// or the returned func is called, which returns when the counter first
// reached size: -1 if it never did.
func (a *aria2) watchUpload(ctx context.Context, start time.Time, size int64) func() time.Duration {
	ctx, cancel := context.WithCancel(ctx)
	at := make(chan time.Duration, 1)
	go func() {
		for {
			// The last poll after cancel still counts: a copy completed
			// just before the round ended.
			done := ctx.Err() != nil
			if up, err := a.uploadLength(context.WithoutCancel(ctx)); err == nil && up >= size {
				at <- time.Since(start)
				return
			}
			if done {
				at <- -1
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() time.Duration {
		cancel()
		return <-at
	}
}

// ensureTorrentTools installs aria2c and mktorrent with apt-get when one
// is missing (the bench runs as root).
func ensureTorrentTools(ctx context.Context) error {
	var missing []string
	for _, bin := range []string{"aria2c", "mktorrent"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Printf("%s missing: apt-get install -y aria2 mktorrent\n", strings.Join(missing, " and "))
	if out, err := exec.CommandContext(ctx, "apt-get", "install", "-y", "aria2", "mktorrent").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install aria2 mktorrent: %w\n%s", err, out)
	}
	return nil
}

// writeRandomFile writes size random bytes to path and returns their
// sha256 hex.
func writeRandomFile(path string, size int64) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// aria2 is a running aria2c with its JSON-RPC on.
type aria2 struct {
	*proc
	addr     string // peer address, 127.0.0.1:port
	rpc      string
	infoHash string // of its one torrent, once known
	gaveUp   bool   // a leecher whose torrent left the active list (roundAria2)
}

// startAria2 starts aria2c with the bench's common flags (no DHT, no LPD,
// RPC on loopback) and args, downloading into dir.
func startAria2(ctx context.Context, name, dir string, args ...string) (*aria2, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	port, rpcPort := ports[0], ports[1]
	common := []string{
		"--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
		"--listen-port=" + strconv.Itoa(port), "--enable-rpc", "--rpc-listen-port=" + strconv.Itoa(rpcPort), "--rpc-listen-all=false",
		"--file-allocation=none", "--console-log-level=warn", "--summary-interval=0", "--auto-save-interval=0",
		"--bt-stop-timeout=0", "--dir=" + dir,
	}
	a := &aria2{
		proc: &proc{name: name, stderr: &lockedBuffer{}},
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		rpc:  fmt.Sprintf("http://127.0.0.1:%d/jsonrpc", rpcPort),
	}
	a.cmd = exec.Command("aria2c", append(common, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.stderr, a.stderr
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	a.watch()
	// Wait for its RPC.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := a.tellActive(ctx); err == nil {
			return a, nil
		}
		select {
		case <-a.exited:
			return nil, fmt.Errorf("%s exited: %.1500s", name, a.stderr.String())
		case <-ctx.Done():
			a.kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.kill()
			return nil, fmt.Errorf("%s: no RPC after 30s: %.1500s", name, a.stderr.String())
		}
	}
}

// kill kills aria2c and waits for it; aria2c's graceful stop is not
// needed, nothing it keeps is used after.
func (a *aria2) kill() {
	a.stopOnce.Do(func() {
		_ = a.cmd.Process.Kill()
		<-a.exited
	})
}

// startSeeder starts a fresh aria2c seeding the run's file at the seed
// rate, and waits until it seeds (its integrity check of the file done).
func (r *torrentRun) startSeeder(ctx context.Context, name string) (*aria2, error) {
	rate := strconv.FormatInt(int64(r.o.seedRate), 10)
	s, err := startAria2(ctx, name, filepath.Dir(r.file),
		"--seed-ratio=0.0", "--check-integrity=true", "--enable-peer-exchange=true",
		"--max-overall-upload-limit="+rate, "--max-upload-limit="+rate, r.torrent)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(2*time.Minute + time.Duration(r.size/(100*mib))*time.Second)
	for {
		st, err := s.status(ctx)
		if err == nil && st.Seeder == "true" {
			s.infoHash = st.InfoHash
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s exited: %.1500s", name, s.stderr.String())
		case <-ctx.Done():
			s.kill()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return nil, fmt.Errorf("%s: not seeding in time (%+v, %v): %.1500s", name, st, err, s.stderr.String())
		}
	}
}

// aria2Status is the part of aria2.tellActive's answer used here; aria2
// sends its numbers as decimal strings.
type aria2Status struct {
	InfoHash        string `json:"infoHash"`
	Seeder          string `json:"seeder"`
	UploadLength    string `json:"uploadLength"`
	CompletedLength string `json:"completedLength"`
	TotalLength     string `json:"totalLength"`
}

// tellActive asks aria2c's JSON-RPC for its active downloads.
func (a *aria2) tellActive(ctx context.Context) ([]aria2Status, error) {
	b, err := a.rpcCall(ctx, "aria2.tellActive", []any{[]string{"infoHash", "seeder", "uploadLength", "completedLength", "totalLength"}})
	if err != nil {
		return nil, err
	}
	return parseTellActive(b)
}

// rpcCall calls method on aria2c's JSON-RPC and returns the raw answer.
func (a *aria2) rpcCall(ctx context.Context, method string, params []any) ([]byte, error) {
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "bench", "method": method, "params": params})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.rpc, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// parseTellActive decodes an aria2.tellActive answer.
func parseTellActive(b []byte) ([]aria2Status, error) {
	var out struct {
		Result []aria2Status `json:"result"`
		Error  *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("aria2 rpc: %w", err)
	}
	if out.Error != nil {
		return nil, fmt.Errorf("aria2 rpc: %s", out.Error.Message)
	}
	return out.Result, nil
}

// errNoActive: aria2c has no active download.
var errNoActive = errors.New("no active download")

// stopped returns the error messages of aria2c's stopped downloads, for a
// report.
func (a *aria2) stopped(ctx context.Context) string {
	b, err := a.rpcCall(ctx, "aria2.tellStopped", []any{0, 10, []string{"status", "errorCode", "errorMessage"}})
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// status returns the status of aria2c's one torrent.
func (a *aria2) status(ctx context.Context) (aria2Status, error) {
	sts, err := a.tellActive(ctx)
	if err != nil {
		return aria2Status{}, err
	}
	switch len(sts) {
	case 0:
		return aria2Status{}, fmt.Errorf("%s: %w", a.name, errNoActive)
	case 1:
	default:
		return aria2Status{}, fmt.Errorf("%s: %d active downloads, want 1", a.name, len(sts))
	}
	return sts[0], nil
}

// uploadLength is the bytes aria2c has uploaded of its torrent.
func (a *aria2) uploadLength(ctx context.Context) (int64, error) {
	st, err := a.status(ctx)
	if err != nil {
		return 0, err
	}
	return parseAria2Int(st.UploadLength)
}

// parseAria2Int parses one of aria2's numbers: a non-negative decimal
// string.
func parseAria2Int(s string) (int64, error) {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("aria2 rpc: number %q", s)
	}
	return v, nil
}

// freePorts returns k distinct loopback TCP ports free a moment ago: all
// are held open until the last is picked, or the kernel may hand out one
// port twice (an aria2c whose peer port was its RPC port got nowhere).
func freePorts(k int) ([]int, error) {
	var ports []int
	for range k {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// miniTracker is a minimal HTTP tracker (BEP 3 with compact BEP 23
// answers): it hands every announce the peers that announced before (and
// any added), except the announcer itself.
type miniTracker struct {
	url string
	srv *http.Server

	mu    sync.Mutex
	peers []string // 127.0.0.1:port, in order of arrival
}

func startMiniTracker() (*miniTracker, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &miniTracker{url: "http://" + ln.Addr().String() + "/announce"}
	t.srv = &http.Server{Handler: http.HandlerFunc(t.announce), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = t.srv.Serve(ln) }()
	return t, nil
}

func (t *miniTracker) close() { _ = t.srv.Close() }

func (t *miniTracker) reset() {
	t.mu.Lock()
	t.peers = nil
	t.mu.Unlock()
}

func (t *miniTracker) add(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !slices.Contains(t.peers, addr) {
		t.peers = append(t.peers, addr)
	}
}

func (t *miniTracker) announce(w http.ResponseWriter, req *http.Request) {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	port := req.URL.Query().Get("port")
	if err != nil || port == "" {
		http.Error(w, "bad announce", http.StatusBadRequest)
		return
	}
	self := net.JoinHostPort(host, port)
	t.mu.Lock()
	if req.URL.Query().Get("event") == "stopped" {
		t.peers = slices.DeleteFunc(t.peers, func(p string) bool { return p == self })
	} else if !slices.Contains(t.peers, self) {
		t.peers = append(t.peers, self)
	}
	others := slices.DeleteFunc(slices.Clone(t.peers), func(p string) bool { return p == self })
	t.mu.Unlock()
	_, _ = w.Write(announceResponse(others, 5))
}

// announceResponse is a tracker's bencoded answer: the interval in seconds
// and the IPv4 peers in compact form (6 bytes each); others are skipped.
func announceResponse(peers []string, interval int) []byte {
	var compact []byte
	for _, p := range peers {
		ap, err := netipAddrPort(p)
		if err != nil {
			continue
		}
		compact = append(compact, ap...)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "d8:intervali%de12:min intervali%de5:peers%d:", interval, interval, len(compact))
	b.Write(compact)
	b.WriteString("e")
	return b.Bytes()
}

// netipAddrPort renders an IPv4 host:port as 6 compact bytes.
func netipAddrPort(addr string) ([]byte, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host).To4()
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("not an ipv4 host:port: %q", addr)
	}
	return append(ip, byte(p>>8), byte(p)), nil
}
