package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/damselfly/damselfly/pkg/clusterauth"
)

// proc is a Damselfly binary running as a subprocess, so that its memory can
// be read from /proc.
type proc struct {
	name     string
	cmd      *exec.Cmd
	stderr   *lockedBuffer
	exited   chan struct{} // closed once the process has exited (watch)
	waitErr  error         // what Wait returned, set before exited is closed
	stopOnce sync.Once
}

// watch reaps the started process in the background.
func (p *proc) watch() {
	p.exited = make(chan struct{})
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// clusterToken is the cluster token of every process a run starts, new for
// each run.
var clusterToken = func() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "bench-" + hex.EncodeToString(b[:])
}()

// startProc starts bin/<name> with args and waits until healthURL answers
// 200.
func startProc(ctx context.Context, o options, name, healthURL string, args ...string) (*proc, error) {
	return startProcIn(ctx, o, "", name, healthURL, args...)
}

// startProcIn is startProc in network namespace ns ("": this one), whose
// health URL is reached from within ns.
func startProcIn(ctx context.Context, o options, ns, name, healthURL string, args ...string) (*proc, error) {
	p := &proc{name: name, stderr: &lockedBuffer{}}
	p.cmd = nsCommand(ns, filepath.Join(o.binDir, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	// Every supernode and dfdaemon of a run is one cluster.
	p.cmd.Env = append(os.Environ(), clusterauth.EnvToken+"="+clusterToken)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.watch()
	// A daemon that exits at start (a taken port, a bad flag) ends the wait
	// at once instead of after waitHealthy's deadline.
	hctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-hctx.Done():
		}
	}()
	err := waitHealthyWith(hctx, nsHTTPClient(ns), healthURL)
	cancel()
	if err != nil {
		select {
		case <-p.exited:
			err = fmt.Errorf("exited before it was healthy (%v)", p.waitErr)
		default:
		}
		p.stop()
		return nil, fmt.Errorf("%s: %w: %s", name, err, p.stderr.String())
	}
	return p, nil
}

// stop interrupts the process and waits for it, killing it after 15s. Only
// the first call does anything.
func (p *proc) stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// peakRSS returns the process's peak resident set size (VmHWM) in bytes.
func (p *proc) peakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no VmHWM in /proc/%d/status", p.name, p.cmd.Process.Pid)
}

// cpuTime returns the user plus system CPU time the process has used.
func (p *proc) cpuTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: malformed /proc/%d/stat", p.name, p.cmd.Process.Pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: short /proc/%d/stat", p.name, p.cmd.Process.Pid)
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: /proc/%d/stat: %w", p.name, p.cmd.Process.Pid, err)
		}
		ticks += v
	}
	// USER_HZ is 100 on every Linux platform Go supports.
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// startOnFreePorts starts bin/<name> on k free loopback addresses, which
// build turns into the health URL and the arguments. An address is free when
// picked but may be taken (by another daemon or an outgoing connection)
// before the daemon binds it, so a start that fails on a taken address is
// tried again with new ones, up to three times.
func startOnFreePorts(ctx context.Context, o options, name string, k int, build func(addrs []string) (healthURL string, args []string)) (*proc, []string, error) {
	var err error
	for range 3 {
		addrs := make([]string, k)
		for i := range addrs {
			if addrs[i], err = freeAddr(); err != nil {
				return nil, nil, err
			}
		}
		health, args := build(addrs)
		var p *proc
		p, err = startProc(ctx, o, name, health, args...)
		if err == nil {
			return p, addrs, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			return nil, nil, err
		}
	}
	return nil, nil, err
}
