// Package e2e holds in-process end-to-end tests: a real origin, a real
// supernode and real dfget processes, all on 127.0.0.1.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// binDir holds the binaries built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "damselfly-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	if !testing.Short() {
		// dfdaemon runs as a process where a test must kill it for real.
		cmd := exec.Command("go", "build", "-o", dir, "github.com/damselfly/damselfly/dfget", "github.com/damselfly/damselfly/dfdaemon")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build dfget and dfdaemon:", err)
			return 1
		}
	}
	return m.Run()
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
}

// origin is a real HTTP file server that counts the bytes it sends and can
// be throttled to a total egress rate shared by all its connections.
type origin struct {
	*httptest.Server
	data     []byte
	sum      string
	served   atomic.Int64
	requests atomic.Int64
	limiter  *rate.Limiter
}

func newOrigin(t *testing.T, size int, bytesPerSec int) *origin {
	t.Helper()
	o := &origin{data: make([]byte, size)}
	_, err := rand.Read(o.data)
	require.NoError(t, err)
	sum := sha256.Sum256(o.data)
	o.sum = hex.EncodeToString(sum[:])
	if bytesPerSec > 0 {
		o.limiter = rate.NewLimiter(rate.Limit(bytesPerSec), 256<<10)
	}
	modTime := time.Now()
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.requests.Add(1)
		cw := &countingWriter{ResponseWriter: w, o: o, ctx: r.Context()}
		http.ServeContent(cw, r, "blob", modTime, bytes.NewReader(o.data))
	}))
	t.Cleanup(o.Close)
	return o
}

func (o *origin) url(name string) string { return o.URL + "/files/" + name }

type countingWriter struct {
	http.ResponseWriter
	o   *origin
	ctx context.Context
}

func (c *countingWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), 64<<10)
		if c.o.limiter != nil {
			if err := c.o.limiter.WaitN(c.ctx, n); err != nil {
				return written, err
			}
		}
		m, err := c.ResponseWriter.Write(p[:n])
		written += m
		c.o.served.Add(int64(m))
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// memberEnv is the environment of a member process: this one's, with the
// cluster token of every supernode the tests start.
func memberEnv() []string {
	return append(os.Environ(), clusterauth.EnvToken+"="+supernodetest.ClusterToken)
}

// clusterTokenFile writes the cluster token of every supernode the tests
// start to a file, for --cluster-token-file.
func clusterTokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster-token")
	require.NoError(t, os.WriteFile(p, []byte(supernodetest.ClusterToken+"\n"), 0o600))
	return p
}

// supernode is a supernode running in this process.
type supernode struct {
	addr  string
	token string
}

func startSupernode(t *testing.T, extraArgs ...string) *supernode {
	t.Helper()
	sn := supernodetest.Start(t, "e2e-admin-token", append([]string{"--log-level", "warn"}, extraArgs...)...)
	return &supernode{addr: sn.Addr, token: sn.Token}
}

// writeConfig writes a supernode YAML config and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "supernode.yaml")
	require.NoError(t, os.WriteFile(p, []byte(yaml), 0o600))
	return p
}

// adminGet decodes an authenticated admin API answer into v.
func (s *supernode) adminGet(t *testing.T, path string, v any) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.addr+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && v != nil {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	}
	return resp.StatusCode
}

// adminTask is the part of GET /api/v1/tasks/{id} the tests read.
type adminTask struct {
	TaskID         string `json:"taskId"`
	State          string `json:"state"`
	Size           int64  `json:"size"`
	PieceCount     int    `json:"pieceCount"`
	BytesFromCDN   int64  `json:"bytesFromCdn"`
	BytesFromPeers int64  `json:"bytesFromPeers"`
	Peers          []struct {
		ID     string `json:"id"`
		Addr   string `json:"addr"`
		Pieces int    `json:"pieces"`
		Struck bool   `json:"struck"`
	} `json:"peers"`
}

func (s *supernode) tasks(t *testing.T) []adminTask {
	t.Helper()
	var out struct {
		Tasks []adminTask `json:"tasks"`
	}
	require.Equal(t, http.StatusOK, s.adminGet(t, "/api/v1/tasks", &out))
	return out.Tasks
}

// dfget is one dfget process.
type dfget struct {
	cmd    *exec.Cmd
	out    string
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startDfget(t *testing.T, ctx context.Context, url, out string, args ...string) *dfget {
	t.Helper()
	full := append([]string{
		"-u", url, "-o", out,
		"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
		"--log-level", "warn",
		// The origin, the CDN and the peers all live on loopback, which the
		// outbound policies deny by default.
		"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
	}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), full...)
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

// wait returns the process's exit error (nil for exit 0).
func (d *dfget) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("dfget did not finish within %s; stderr:\n%s", timeout, d.stderr.String())
	}
	return nil
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
