// Command bench measures Damselfly on loopback. It has three modes (-mode):
//
//   - swarm (the default) compares Damselfly against direct downloads, side
//     by side in one run: N dfget peers fetch one file through a supernode
//     from an origin whose egress is throttled, then N plain HTTP clients
//     fetch the same file straight from the same origin. It prints origin
//     egress / file size and p50/p99/max completion times for both.
//
//   - stream pulls one large layer through a dfdaemon and straight from the
//     registry, alternating, and prints the throughput of each, their ratio
//     and dfdaemon's peak RSS (stream.go).
//
//   - manifests sends GET manifest by tag through a registry-cache from many
//     concurrent clients and prints requests/s, latency percentiles and how
//     many requests reached the upstream (manifests.go).
//
//     go run ./hack/bench -n 8 -size 256 -origin-rate 100
//     go run ./hack/bench -mode stream -size 1024 -rounds 3
//     go run ./hack/bench -mode manifests -clients 200 -duration 10s
//
// The binaries are taken from ./bin (make build).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

const mib = 1 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	mode       string
	peers      int
	sizeMiB    int
	originRate int
	binDir     string
	keep       bool

	// stream
	rounds int

	// manifests
	clients  int
	duration time.Duration
	tags     int
	tagTTL   time.Duration
}

func run() error {
	var o options
	flag.StringVar(&o.mode, "mode", "swarm", "what to measure: swarm (dfget peers vs direct downloads), stream (one pull through dfdaemon vs direct) or manifests (manifest GETs through registry-cache)")
	flag.IntVar(&o.peers, "n", 8, "swarm: number of concurrent downloaders per mode")
	flag.IntVar(&o.sizeMiB, "size", 0, "file or layer size in MiB (default 256 in swarm mode, 1024 in stream mode)")
	flag.IntVar(&o.originRate, "origin-rate", 100, "swarm: origin egress limit in MiB/s, shared by all its connections")
	flag.StringVar(&o.binDir, "bin", "bin", "directory holding the supernode, dfget, dfdaemon and registry-cache binaries")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.IntVar(&o.rounds, "rounds", 3, "stream: pulls of each kind, alternating (medians are reported)")
	flag.IntVar(&o.clients, "clients", 200, "manifests: concurrent clients")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "manifests: how long the clients send requests")
	flag.IntVar(&o.tags, "tags", 4, "manifests: tags the clients ask for, round robin")
	flag.DurationVar(&o.tagTTL, "tag-ttl", 0, "manifests: registry-cache cache.tagTTL (default: registry-cache's default, 30s)")
	flag.Parse()
	if o.sizeMiB == 0 {
		o.sizeMiB = 256
		if o.mode == "stream" {
			o.sizeMiB = 1024
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	work, err := os.MkdirTemp("", "damselfly-bench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}

	switch o.mode {
	case "swarm":
		return runSwarm(ctx, o, work)
	case "stream":
		return runStream(ctx, o, work)
	case "manifests":
		return runManifests(ctx, o, work)
	default:
		return fmt.Errorf("-mode %q: want swarm, stream or manifests", o.mode)
	}
}

func runSwarm(ctx context.Context, o options, work string) error {
	if o.peers < 1 || o.sizeMiB < 1 || o.originRate < 1 {
		return errors.New("-n, -size and -origin-rate must be positive")
	}
	data := make([]byte, o.sizeMiB*mib)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	org, err := startOrigin(data, o.originRate*mib)
	if err != nil {
		return err
	}
	defer org.close()

	fmt.Printf("file %d MiB, %d downloaders per mode, origin egress limited to %d MiB/s (ideal for one copy: %.2fs)\n\n",
		o.sizeMiB, o.peers, o.originRate, float64(o.sizeMiB)/float64(o.originRate))

	p2p, err := benchP2P(ctx, o, org, work, want)
	if err != nil {
		return fmt.Errorf("p2p: %w", err)
	}
	direct, err := benchDirect(ctx, o, org, want)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tN\torigin egress / size\tp50\tp99\tmax\t")
	for _, r := range []result{p2p, direct} {
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.2fs\t%.2fs\t%.2fs\t\n", r.mode, o.peers,
			float64(r.egress)/float64(len(data)), pct(r.times, 50), pct(r.times, 99), pct(r.times, 100))
	}
	tw.Flush()
	fmt.Printf("\np2p vs direct: p50 %.2fx faster, origin egress %.1fx lower\n",
		pct(direct.times, 50)/pct(p2p.times, 50), float64(direct.egress)/float64(p2p.egress))
	return nil
}

type result struct {
	mode   string
	egress int64
	times  []float64 // seconds, sorted
}

// pct returns the p-th percentile (nearest rank) of sorted xs.
func pct(xs []float64, p int) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := (p*len(xs) + 99) / 100
	return xs[max(i-1, 0)]
}

func benchP2P(ctx context.Context, o options, org *origin, work, want string) (result, error) {
	org.reset()
	addr, err := freeAddr()
	if err != nil {
		return result{}, err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	sn := exec.CommandContext(sctx, filepath.Join(o.binDir, "supernode"),
		"--listen", addr, "--data-dir", filepath.Join(work, "supernode"),
		"--admin-token", "bench", "--log-level", "warn", "--source-allow", "127.0.0.1/32")
	sn.Stderr = os.Stderr
	if err := sn.Start(); err != nil {
		return result{}, fmt.Errorf("start supernode: %w", err)
	}
	defer func() { _ = sn.Process.Signal(os.Interrupt); _ = sn.Wait() }()
	if err := waitHealthy(ctx, "http://"+addr+"/healthz"); err != nil {
		return result{}, err
	}

	times := make([]float64, o.peers)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for i := range o.peers {
		g.Go(func() error {
			out := filepath.Join(work, fmt.Sprintf("p2p-%d", i))
			var stderr bytes.Buffer
			cmd := exec.CommandContext(gctx, filepath.Join(o.binDir, "dfget"),
				"-u", org.url+"/file.bin", "-o", out, "--node", addr, "--notbs",
				"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1", "--log-level", "warn",
				"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32")
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("dfget %d: %w: %s", i, err, stderr.String())
			}
			times[i] = time.Since(start).Seconds()
			return checkFile(out, want)
		})
	}
	if err := g.Wait(); err != nil {
		return result{}, err
	}
	slices.Sort(times)
	return result{mode: "dfget p2p", egress: org.served.Load(), times: times}, nil
}

func benchDirect(ctx context.Context, o options, org *origin, want string) (result, error) {
	org.reset()
	times := make([]float64, o.peers)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for i := range o.peers {
		g.Go(func() error {
			req, err := http.NewRequestWithContext(gctx, http.MethodGet, org.url+"/file.bin", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, resp.Body); err != nil {
				return err
			}
			times[i] = time.Since(start).Seconds()
			if got := hex.EncodeToString(h.Sum(nil)); got != want {
				return fmt.Errorf("direct %d: sha256 %s, want %s", i, got, want)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return result{}, err
	}
	slices.Sort(times)
	return result{mode: "direct", egress: org.served.Load(), times: times}, nil
}

func checkFile(path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s: sha256 %s, want %s", path, got, want)
	}
	return nil
}

func waitHealthy(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not healthy after 30s", url)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// origin serves one file, throttled to a total egress rate, and counts the
// bytes it sends.
type origin struct {
	url     string
	srv     *http.Server
	served  atomic.Int64
	limiter *rate.Limiter
}

func startOrigin(data []byte, bytesPerSec int) (*origin, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	o := &origin{url: "http://" + ln.Addr().String(), limiter: rate.NewLimiter(rate.Limit(bytesPerSec), 256<<10)}
	mod := time.Now()
	o.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(&throttled{ResponseWriter: w, o: o, ctx: r.Context()}, r, "file.bin", mod, bytes.NewReader(data))
	})}
	go func() { _ = o.srv.Serve(ln) }()
	return o, nil
}

func (o *origin) reset() { o.served.Store(0) }

func (o *origin) close() { _ = o.srv.Close() }

type throttled struct {
	http.ResponseWriter
	o   *origin
	ctx context.Context
}

func (t *throttled) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), 64<<10)]
		if err := t.o.limiter.WaitN(t.ctx, len(chunk)); err != nil {
			return n, err
		}
		m, err := t.ResponseWriter.Write(chunk)
		n += m
		t.o.served.Add(int64(m))
		if err != nil {
			return n, err
		}
		p = p[len(chunk):]
	}
	return n, nil
}
