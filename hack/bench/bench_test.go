package main

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMedian(t *testing.T) {
	require.Equal(t, 0.0, median(nil))
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
	xs := []float64{3, 1, 2}
	median(xs)
	require.Equal(t, []float64{3, 1, 2}, xs, "median must not reorder its argument")
}

func TestPct(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	require.Equal(t, 5.0, pct(xs, 50))
	require.Equal(t, 10.0, pct(xs, 99))
	require.Equal(t, 10.0, pct(xs, 100))
	require.Equal(t, 0.0, pct(nil, 50))
}

// TestProcStats reads the peak RSS and CPU time of a child process from
// /proc: the child is the test binary itself, which allocates and touches
// 64 MiB and burns 100ms of CPU before waiting to be killed.
func TestProcStats(t *testing.T) {
	if os.Getenv("BENCH_PROC_CHILD") == "1" {
		b := make([]byte, 64<<20)
		// Touch every page, and keep at it until the child has used 100ms
		// of CPU (bounded in wall time on a busy machine).
		for start := time.Now(); ; {
			for i := 0; i < len(b); i += 4096 {
				b[i]++
			}
			if selfCPUTime() >= 100*time.Millisecond || time.Since(start) > 30*time.Second {
				break
			}
		}
		os.Stdout.WriteString("ready\n")
		time.Sleep(time.Minute)
		os.Exit(int(b[len(b)-1]) & 0) // keeps b alive
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProcStats$")
	cmd.Env = append(os.Environ(), "BENCH_PROC_CHILD=1")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &proc{name: "child", cmd: cmd}
	p.watch()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	line := make([]byte, 6)
	_, err = io.ReadFull(out, line)
	require.NoError(t, err)
	require.Equal(t, "ready\n", string(line))

	rss, err := p.peakRSS()
	require.NoError(t, err)
	require.Greater(t, rss, int64(64<<20), "VmHWM must cover the 64 MiB the child touched")
	require.Less(t, rss, int64(1<<30))
	cpu, err := p.cpuTime()
	require.NoError(t, err)
	// /proc counts whole clock ticks; allow for the rounding.
	require.GreaterOrEqual(t, cpu, 50*time.Millisecond, "the child spun for 100ms of CPU")
	require.Less(t, cpu, time.Minute)
}

// TestThrottle sends 256 KiB through a throttle of 1 MiB/s: every byte
// arrives, the count is exact, and it takes at least the time the rate
// allows (all but one burst).
func TestThrottle(t *testing.T) {
	t.Parallel()
	const size = 256 << 10
	payload := bytes.Repeat([]byte("damselfly"), size/9+1)[:size]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(payload)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	th, err := startThrottle(ln.Addr().String(), 1<<20)
	require.NoError(t, err)
	t.Cleanup(th.Close)

	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	start := time.Now()
	resp, err := hc.Get("http://" + th.Addr() + "/")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	took := time.Since(start)
	require.Equal(t, payload, body)
	require.Greater(t, th.Sent(), int64(size), "the body and the response header")
	require.Less(t, th.Sent(), int64(size+1024))
	least := time.Duration(float64(size-throttleChunk) / (1 << 20) * float64(time.Second))
	require.GreaterOrEqual(t, took, least)
	th.Reset()
	require.Zero(t, th.Sent())
}

// TestThrottledReader paces a reader at its limiter's rate.
func TestThrottledReader(t *testing.T) {
	t.Parallel()
	const size = 192 << 10
	r := &throttledReader{ctx: t.Context(), r: bytes.NewReader(make([]byte, size)), lim: newByteLimiter(1 << 20)}
	start := time.Now()
	n, err := io.Copy(io.Discard, r)
	require.NoError(t, err)
	require.Equal(t, int64(size), n)
	require.GreaterOrEqual(t, time.Since(start), time.Duration(float64(size-throttleChunk)/(1<<20)*float64(time.Second)))
}

// TestChartPNG draws the suite's chart and decodes it: a PNG of the
// requested size, with each mode's colour on it.
func TestChartPNG(t *testing.T) {
	t.Parallel()
	rep := report{size: 32 << 20, ideal: 4, rate: 8 << 20}
	for _, n := range []int{1, 2, 4, 8, 16} {
		rep.results = append(rep.results,
			scenario{mode: modeDirect, n: n, times: []float64{4 * float64(n)}},
			scenario{mode: modePullThrough, n: n, times: []float64{4*float64(n) + 0.5}},
			scenario{mode: modeDamselfly, n: n, times: []float64{4.5, 5}})
	}
	b, err := encodeChart(rep.chart())
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, 1000, 600), img.Bounds())
	seen := map[color.RGBA]int{}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, b, a := img.At(x, y).RGBA()
			seen[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}]++
		}
	}
	for _, m := range allModes() {
		require.Greater(t, seen[modeColor(m)], 200, "lines of %s", m)
	}
	require.Greater(t, seen[chartInk], 500, "axes and text")

	path := filepath.Join(t.TempDir(), "chart.png")
	require.NoError(t, writeChartFile(path, rep.chart()))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	require.NoError(t, err)
	require.Equal(t, 1000, cfg.Width)
	require.Equal(t, 600, cfg.Height)
}

func TestParseInts(t *testing.T) {
	t.Parallel()
	v, err := parseInts("1, 2,16")
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 16}, v)
	for _, bad := range []string{"", "0", "1,,2", "x", "-4"} {
		_, err := parseInts(bad)
		require.Error(t, err, bad)
	}
}

// A daemon that exits at start ends startProc's wait at once, with its
// stderr in the error, instead of after the health check's 30 s deadline.
func TestStartProcDaemonExitsAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := "#!/bin/sh\necho 'listen tcp 127.0.0.1:1: bind: address already in use' >&2\nexit 1\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "supernode"), []byte(script), 0o755))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	health := "http://" + ln.Addr().String() + "/healthz"
	require.NoError(t, ln.Close())

	start := time.Now()
	_, err = startProc(t.Context(), options{binDir: dir}, "supernode", health)
	require.Error(t, err)
	require.Contains(t, err.Error(), "exited before it was healthy")
	require.Contains(t, err.Error(), "address already in use")
	require.Less(t, time.Since(start), 20*time.Second, "the wait ends when the process exits")
}
