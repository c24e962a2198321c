package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

const manifestsRepo = "bench/manifests"

// manifestRound is what one round of the manifests benchmark measured.
type manifestRound struct {
	requests, failures int
	elapsed            time.Duration
	lat                []time.Duration // sorted
	rcCPU, selfCPU     time.Duration
}

func (r manifestRound) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r manifestRound) ms(p int) float64 {
	if len(r.lat) == 0 {
		return 0
	}
	i := (p*len(r.lat) + 99) / 100
	return float64(r.lat[max(i-1, 0)]) / float64(time.Millisecond)
}

func perRequest(d time.Duration, n int) float64 {
	return float64(d.Microseconds()) / float64(max(n, 1))
}

// runManifests pushes -tags small images to a registry, starts a
// registry-cache in front of it and has -clients connections GET the
// manifests by tag through it, round robin, for -duration, -rounds times.
// It prints requests/s, latency percentiles, the CPU time registry-cache and
// the clients spent per request, registry-cache's peak RSS and the manifest
// requests that reached the registry.
//
// The clients are lean, so that they take as little as possible of the CPU
// the server needs: each is one keep-alive HTTP/1.1 connection that writes a
// prepared request and parses the status line, the headers and the
// Content-Length body itself. Unless GOMAXPROCS is set in the environment,
// they run with GOMAXPROCS=1 (one core for the load, the rest for
// registry-cache).
func runManifests(ctx context.Context, o options, work string) error {
	if o.clients < 1 || o.tags < 1 || o.duration <= 0 || o.rounds < 1 {
		return errors.New("-clients, -tags, -duration and -rounds must be positive")
	}
	reg, err := registrytest.Start(ctx, registrytest.WithDir(filepath.Join(work, "registry")))
	if err != nil {
		return err
	}
	defer reg.Close()

	tags := make([]string, o.tags)
	digests := make([]string, o.tags)
	for i := range tags {
		tags[i] = fmt.Sprintf("v%d", i)
		img, err := reg.PushRandomImage(ctx, manifestsRepo, tags[i], 1<<10)
		if err != nil {
			return err
		}
		digests[i] = img.Manifest.String()
	}

	var extra []string
	ttl, ttlDur := "30s (default)", 30*time.Second
	if o.tagTTL > 0 {
		ttlDur = o.tagTTL
		cfg := filepath.Join(work, "registry-cache.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, "cache:\n  tagTTL: %s\n", o.tagTTL), 0o644); err != nil {
			return err
		}
		extra = append(extra, "--config", cfg)
		ttl = o.tagTTL.String()
	}
	rc, addrs, err := startOnFreePorts(ctx, o, "registry-cache", 1, func(a []string) (string, []string) {
		return "http://" + a[0] + "/healthz", append([]string{"--listen", a[0], "--upstream", reg.URL.String(), "--source-allow", "127.0.0.1/32", "--log-level", "warn"}, extra...)
	})
	if err != nil {
		return err
	}
	addr := addrs[0]
	defer rc.stop()

	if os.Getenv("GOMAXPROCS") == "" {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	}
	reqs := make([][]byte, o.tags)
	for i, tag := range tags {
		reqs[i] = manifestRequest(addr, "/v2/"+manifestsRepo+"/manifests/"+tag)
	}

	reg.ResetStats()
	fmt.Printf("%d tags of %s, %d clients (raw keep-alive HTTP/1.1, GOMAXPROCS=%d of %d cores) for %d x %s through registry-cache (tagTTL %s)\n\n",
		o.tags, manifestsRepo, o.clients, runtime.GOMAXPROCS(0), runtime.NumCPU(), o.rounds, o.duration, ttl)

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\trequests\terrors\treq/s\tp50\tp99\tmax\tregistry-cache CPU/req\tclients' CPU/req\t")
	var (
		rounds   []manifestRound
		firstErr error
		total    time.Duration
	)
	for i := range o.rounds {
		r, err := manifestLoad(ctx, o, rc, addr, reqs, digests)
		if err != nil {
			return err
		}
		if r.failures > 0 && firstErr == nil {
			firstErr = r.err
		}
		total += r.elapsed
		rounds = append(rounds, r.manifestRound)
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.0f\t%.2fms\t%.2fms\t%.2fms\t%.1f µs\t%.1f µs\t\n", i+1, r.requests, r.failures, r.rps(),
			r.ms(50), r.ms(99), r.ms(100), perRequest(r.rcCPU, r.requests), perRequest(r.selfCPU, r.requests))
	}
	med := func(f func(manifestRound) float64) float64 {
		xs := make([]float64, len(rounds))
		for i, r := range rounds {
			xs[i] = f(r)
		}
		return median(xs)
	}
	rps := med(manifestRound.rps)
	fmt.Fprintf(tw, "median\t\t\t%.0f\t%.2fms\t%.2fms\t\t%.1f µs\t%.1f µs\t\n", rps,
		med(func(r manifestRound) float64 { return r.ms(50) }), med(func(r manifestRound) float64 { return r.ms(99) }),
		med(func(r manifestRound) float64 { return perRequest(r.rcCPU, r.requests) }),
		med(func(r manifestRound) float64 { return perRequest(r.selfCPU, r.requests) }))
	tw.Flush()

	st := reg.Stats()
	upstreamGETs := 0
	for _, tag := range tags {
		upstreamGETs += st.ManifestGETs[manifestsRepo+":"+tag]
	}
	rss, err := rc.peakRSS()
	if err != nil {
		return err
	}
	fmt.Printf("\nin %.1fs: upstream manifest GETs %d (%d tags), upstream requests %d; registry-cache peak RSS %.1f MiB\n",
		total.Seconds(), upstreamGETs, o.tags, st.Requests, float64(rss)/mib)
	if firstErr != nil {
		fmt.Printf("\nfirst error: %v\n", firstErr)
	}
	fmt.Printf("\ntargets: >= 20000 req/s (median): %s; at most one upstream request per tag per TTL: %s\n",
		verdict(rps >= 20000), verdict(st.Requests <= o.tags*int(1+total/ttlDur)))
	for _, r := range rounds {
		if r.failures > 0 {
			return errors.New("requests failed")
		}
	}
	return nil
}

type loadResult struct {
	manifestRound
	err error
}

// manifestLoad runs one round: -clients connections for -duration.
func manifestLoad(ctx context.Context, o options, rc *proc, addr string, reqs [][]byte, digests []string) (loadResult, error) {
	var (
		failures atomic.Int64
		firstErr error
		errOnce  sync.Once
		mu       sync.Mutex
		lat      []time.Duration
		wg       sync.WaitGroup
	)
	rcCPU0, err := rc.cpuTime()
	if err != nil {
		return loadResult{}, err
	}
	selfCPU0 := selfCPUTime()
	start := time.Now()
	deadline := start.Add(o.duration)
	for c := range o.clients {
		wg.Go(func() {
			cl := &rawClient{addr: addr, deadline: deadline.Add(10 * time.Second)}
			defer cl.close()
			mine := make([]time.Duration, 0, 4096)
			for i := c; ctx.Err() == nil; i++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				t := i % len(reqs)
				// Every response's Docker-Content-Digest is checked; the
				// body is hashed for one request in 256.
				if err := cl.get(reqs[t], digests[t], i%256 == c%256); err != nil {
					failures.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	rcCPU, err := rc.cpuTime()
	if err != nil {
		return loadResult{}, err
	}
	slices.Sort(lat)
	return loadResult{manifestRound: manifestRound{
		requests: len(lat), failures: int(failures.Load()), elapsed: elapsed, lat: lat,
		rcCPU: rcCPU - rcCPU0, selfCPU: selfCPUTime() - selfCPU0,
	}, err: firstErr}, nil
}

// manifestRequest is a prepared GET of a manifest (Docker schema 2).
func manifestRequest(addr, path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: damselfly-bench\r\n" +
		"Accept: " + registrytest.MediaTypeManifest + "\r\n\r\n")
}

// rawClient is one keep-alive HTTP/1.1 connection that sends prepared
// requests and reads their answers itself. It is not safe for concurrent
// use.
type rawClient struct {
	addr     string
	deadline time.Time // of every read and write on the connection
	conn     net.Conn
	br       *bufio.Reader
	body     []byte
}

const maxManifestBody = 4 << 20

var errAnswer = errors.New("unexpected answer")

// get sends req and reads the answer: it must be 200 with a Content-Length
// body and want as Docker-Content-Digest; with hash, the body must hash to
// want too. After an error the connection is closed; the next get dials
// again.
func (c *rawClient) get(req []byte, want string, hash bool) error {
	if err := c.roundTrip(req, want, hash); err != nil {
		c.close()
		return err
	}
	return nil
}

func (c *rawClient) roundTrip(req []byte, want string, hash bool) error {
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
		if err != nil {
			return err
		}
		if err := conn.SetDeadline(c.deadline); err != nil {
			conn.Close()
			return err
		}
		c.conn = conn
		if c.br == nil {
			c.br = bufio.NewReaderSize(conn, 4<<10)
		} else {
			c.br.Reset(conn)
		}
	}
	if _, err := c.conn.Write(req); err != nil {
		return err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("status line: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("%w: %q", errAnswer, bytes.TrimSpace(line))
	}
	length, closing, digestOK := -1, false, false
	for n := 0; ; n++ {
		if n == 100 {
			return fmt.Errorf("%w: more than 100 header lines", errAnswer)
		}
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("headers: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return fmt.Errorf("%w: header line %q", errAnswer, line)
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(v)); err != nil || length < 0 || length > maxManifestBody {
				return fmt.Errorf("%w: Content-Length %q", errAnswer, v)
			}
		case bytes.EqualFold(k, []byte("Docker-Content-Digest")):
			if string(v) != want {
				return fmt.Errorf("%w: Docker-Content-Digest %q, want %s", errAnswer, v, want)
			}
			digestOK = true
		case bytes.EqualFold(k, []byte("Connection")):
			closing = bytes.EqualFold(v, []byte("close"))
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			return fmt.Errorf("%w: Transfer-Encoding %q", errAnswer, v)
		}
	}
	if length < 0 || !digestOK {
		return fmt.Errorf("%w: no Content-Length or Docker-Content-Digest", errAnswer)
	}
	if cap(c.body) < length {
		c.body = make([]byte, length)
	}
	body := c.body[:length]
	if _, err := io.ReadFull(c.br, body); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if hash {
		sum := sha256.Sum256(body)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != want {
			return fmt.Errorf("%w: body hashes to %s, want %s", errAnswer, got, want)
		}
	}
	if closing {
		c.close()
	}
	return nil
}

func (c *rawClient) close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
}

// selfCPUTime returns the user plus system CPU time this process has used.
func selfCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
