package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

const manifestsRepo = "bench/manifests"

// runManifests pushes -tags small images to a registry, starts a
// registry-cache in front of it and has -clients goroutines GET the
// manifests by tag through it, round robin, for -duration. It prints
// requests/s, latency percentiles and the manifest requests that reached
// the registry.
func runManifests(ctx context.Context, o options, work string) error {
	if o.clients < 1 || o.tags < 1 || o.duration <= 0 {
		return errors.New("-clients, -tags and -duration must be positive")
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

	addr, err := freeAddr()
	if err != nil {
		return err
	}
	args := []string{"--listen", addr, "--upstream", reg.URL.String(), "--log-level", "warn"}
	ttl, ttlDur := "30s (default)", 30*time.Second
	if o.tagTTL > 0 {
		ttlDur = o.tagTTL
		cfg := filepath.Join(work, "registry-cache.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, "cache:\n  tagTTL: %s\n", o.tagTTL), 0o644); err != nil {
			return err
		}
		args = append(args, "--config", cfg)
		ttl = o.tagTTL.String()
	}
	rc, err := startProc(ctx, o, "registry-cache", "http://"+addr+"/healthz", args...)
	if err != nil {
		return err
	}
	defer rc.stop()

	reg.ResetStats()
	fmt.Printf("%d tags of %s, %d clients for %s through registry-cache (tagTTL %s)\n\n",
		o.tags, manifestsRepo, o.clients, o.duration, ttl)

	tr := &http.Transport{MaxIdleConns: o.clients * 2, MaxIdleConnsPerHost: o.clients * 2, MaxConnsPerHost: o.clients * 2, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "http://" + addr + "/v2/" + manifestsRepo + "/manifests/"

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
		return err
	}
	selfCPU0 := selfCPUTime()
	start := time.Now()
	deadline := start.Add(o.duration)
	for c := range o.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 4096)
			buf := make([]byte, 8<<10)
			for i := c; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				t := i % o.tags
				t0 := time.Now()
				err := getManifest(ctx, client, base+tags[t], digests[t], buf)
				if err != nil {
					failures.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	st := reg.Stats()
	rcCPU, err := rc.cpuTime()
	if err != nil {
		return err
	}
	rcCPU -= rcCPU0
	selfCPU := selfCPUTime() - selfCPU0

	slices.Sort(lat)
	ms := func(p int) float64 {
		if len(lat) == 0 {
			return 0
		}
		i := (p*len(lat) + 99) / 100
		return float64(lat[max(i-1, 0)]) / float64(time.Millisecond)
	}
	rps := float64(len(lat)) / elapsed.Seconds()
	upstreamGETs := 0
	for _, tag := range tags {
		upstreamGETs += st.ManifestGETs[manifestsRepo+":"+tag]
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\trequests\terrors\treq/s\tp50\tp99\tmax\tupstream manifest GETs\tupstream requests\t")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%.0f\t%.2fms\t%.2fms\t%.2fms\t%d (%d tags)\t%d\t\n", o.clients, len(lat), failures.Load(), rps,
		ms(50), ms(99), ms(100), upstreamGETs, o.tags, st.Requests)
	tw.Flush()
	fmt.Printf("\nCPU time in %.1fs: registry-cache %.1fs (%.0f µs/request), the clients (this process) %.1fs, out of %d cores\n",
		elapsed.Seconds(), rcCPU.Seconds(), float64(rcCPU.Microseconds())/float64(max(len(lat), 1)), selfCPU.Seconds(), runtime.NumCPU())
	if firstErr != nil {
		fmt.Printf("\nfirst error: %v\n", firstErr)
	}
	fmt.Printf("\ntargets: >= 20000 req/s: %s; at most one upstream request per tag per TTL: %s\n",
		verdict(rps >= 20000), verdict(st.Requests <= o.tags*int(1+elapsed/ttlDur)))
	if n := failures.Load(); n > 0 {
		return fmt.Errorf("%d requests failed", n)
	}
	return nil
}

// getManifest GETs a manifest by tag and checks that it is answered 200 with
// the digest the tag was pushed with.
func getManifest(ctx context.Context, client *http.Client, url, want string, buf []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", registrytest.MediaTypeManifest)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.CopyBuffer(io.Discard, resp.Body, buf)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != want {
		return fmt.Errorf("GET %s: digest %q, want %s", url, got, want)
	}
	return nil
}

// selfCPUTime returns the user plus system CPU time this process has used.
func selfCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
