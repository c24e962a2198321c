package main

import (
	"io"
	"os"
	"os/exec"
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
	p := &proc{name: "child", cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
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
