package e2e

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// startDfgetArgs runs dfget with exactly args (no policy flags added).
func startDfgetArgs(t *testing.T, ctx context.Context, out string, args ...string) *dfget {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), args...)
	cmd.Env = memberEnv()
	d := &dfget{cmd: cmd, out: out, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = d.stderr
	cmd.Stdout = d.stderr
	require.NoError(t, cmd.Start())
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.done
	})
	return d
}

// cpuOf returns the user plus system CPU time of a finished process.
func cpuOf(cmd *exec.Cmd) time.Duration {
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// selfCPU returns this process's user plus system CPU time (the supernode
// runs in it).
func selfCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A supernode on 127.0.0.1 and a dfget without --peer-allow: the supernode
// is the one the user named with --node, so its CDN is trusted and the
// download completes at once, without a busy loop in either process (it
// used to ask for the refused piece again and again until the stall
// timeout, about 1,000 assignments a second with both processes busy).
func TestPolicyDeniedLoopbackCDNTrusted(t *testing.T) {
	skipShort(t)
	sn := startSupernode(t)
	o := newOrigin(t, 32*mib+17, 0)
	out := filepath.Join(t.TempDir(), "out")
	cpu0 := selfCPU(t)
	start := time.Now()
	d := startDfgetArgs(t, t.Context(), out, "-u", o.url("f"), "-o", out, "--node", sn.addr,
		"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1", "--log-level", "warn",
		"--notbs", "--stall-timeout", "15s")
	require.NoError(t, d.wait(t, time.Minute), d.stderr.String())
	wall := time.Since(start)
	snCPU := selfCPU(t) - cpu0
	dfgetCPU := cpuOf(d.cmd)
	t.Logf("wall %s, dfget CPU %s, supernode (test process) CPU %s", wall.Round(time.Millisecond),
		dfgetCPU.Round(time.Millisecond), snCPU.Round(time.Millisecond))
	require.Equal(t, o.sum, fileSHA256(t, out))
	require.Less(t, wall, 10*time.Second, "not after a stall")
	require.Less(t, dfgetCPU, 5*time.Second)
	require.Less(t, snCPU, 5*time.Second)
}

// The supernode stops mid-download: dfget says so on stderr within seconds
// (a notice line, stderr not being a terminal), and its final error names
// the supernode.
func TestSupernodeStoppedNotice(t *testing.T) {
	skipShort(t)
	sn := startStoppableSupernode(t)
	o := newOrigin(t, 48*mib, 0)
	out := filepath.Join(t.TempDir(), "out")
	dataDir := filepath.Join(t.TempDir(), "data")
	d := startDfget(t, t.Context(), o.url("f"), out, "--node", sn.addr, "--locallimit", "8M",
		"--notbs", "--stall-timeout", "8s", "--data-dir", dataDir)
	require.Eventually(t, func() bool { return ingestBytes(dataDir) > 0 }, 20*time.Second, 50*time.Millisecond)
	sn.stop()
	stopped := time.Now()
	want := "dfget: supernode " + sn.addr + " unreachable"
	require.Eventually(t, func() bool { return strings.Contains(d.stderr.String(), want) }, 5*time.Second, 20*time.Millisecond,
		"stderr: %s", d.stderr.String())
	t.Logf("notice after %s", time.Since(stopped).Round(time.Millisecond))
	require.Error(t, d.wait(t, 30*time.Second))
	last := lastLine(d.stderr.String())
	require.Contains(t, last, "no piece verified for 8s")
	require.Contains(t, last, "supernode "+sn.addr+" unreachable")
}

// rateLimitedOrigin answers 429 with Retry-After: 1 to its first n
// requests, then serves data.
type rateLimitedOrigin struct {
	*httptest.Server
	requests atomic.Int64
}

func newRateLimitedOrigin(t *testing.T, data []byte, n int64) *rateLimitedOrigin {
	t.Helper()
	o := &rateLimitedOrigin{}
	modTime := time.Now()
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.requests.Add(1) <= n {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
		http.ServeContent(w, r, "blob", modTime, bytes.NewReader(data))
	}))
	t.Cleanup(o.Close)
	return o
}

// The origin rate-limits (429 with Retry-After) for longer than the CDN's
// own retries last: the task fails on the supernode, and the peers, instead
// of each retrying the origin themselves, wait and register again, so the
// CDN makes the next attempt. The origin sees one retry budget, and every
// peer ends verified without going to the source.
func TestRateLimitedOriginOneBudget(t *testing.T) {
	skipShort(t)
	sn := startSupernode(t)
	base := newOrigin(t, 12*mib+5, 0) // just for its data and sum
	const limited = 8                 // the CDN's source client makes 6 attempts
	o := newRateLimitedOrigin(t, base.data, limited)
	dir := t.TempDir()
	var wg sync.WaitGroup
	dfgets := make([]*dfget, 3)
	for i := range dfgets {
		out := filepath.Join(dir, "out"+string(rune('a'+i)))
		dfgets[i] = startDfget(t, t.Context(), o.URL+"/blob", out, "--node", sn.addr)
	}
	for _, d := range dfgets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = d.wait(t, 2*time.Minute)
		}()
	}
	wg.Wait()
	for _, d := range dfgets {
		require.NoError(t, d.wait(t, time.Second), d.stderr.String())
		require.Equal(t, base.sum, fileSHA256(t, d.out))
		require.NotContains(t, d.stderr.String(), "downloading from source", "the peers left the origin to the CDN")
	}
	t.Logf("origin requests: %d", o.requests.Load())
	require.LessOrEqual(t, o.requests.Load(), int64(limited+1), "one retry budget for the blob")
}
