package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

// dfdaemonProc is a dfdaemon running as its own process.
type dfdaemonProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncBuffer
	done   chan error
}

func startDfdaemonProc(t *testing.T, node, upstream, dataDir string) *dfdaemonProc {
	t.Helper()
	addr := closedAddr(t)
	cmd := exec.Command(filepath.Join(binDir, "dfdaemon"),
		"--listen", addr, "--peer-listen", closedAddr(t), "--advertise-ip", "127.0.0.1",
		"--node", node, "--registry", upstream, "--data-dir", dataDir, "--log-level", "warn",
		"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32")
	cmd.Env = memberEnv()
	p := &dfdaemonProc{cmd: cmd, addr: addr, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	require.NoError(t, cmd.Start())
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	require.Eventually(t, func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			return true // reported below
		default:
		}
		return healthy(addr)
	}, 30*time.Second, 20*time.Millisecond, "dfdaemon never became healthy")
	select {
	case err := <-p.done:
		t.Fatalf("dfdaemon exited: %v\n%s", err, p.stderr.String())
	default:
	}
	return p
}

// throttledProxy puts a reverse proxy in front of upstream that sends
// response bodies at bytesPerSec in total.
func throttledProxy(t *testing.T, upstream string, bytesPerSec int) string {
	t.Helper()
	target, err := http.NewRequest(http.MethodGet, upstream, nil)
	require.NoError(t, err)
	rp := httputil.NewSingleHostReverseProxy(target.URL)
	lim := rate.NewLimiter(rate.Limit(bytesPerSec), 64<<10)
	rp.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &throttledBody{ReadCloser: resp.Body, lim: lim, ctx: resp.Request.Context()}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return srv.URL
}

type throttledBody struct {
	io.ReadCloser
	lim *rate.Limiter
	ctx context.Context
}

func (b *throttledBody) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		if werr := b.lim.WaitN(b.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// getBlob pulls one blob through a mirror and returns the status and the
// digest of what the body held up to its end or its error.
func getBlob(ctx context.Context, mirror, repo string, d digest.Digest) (int, digest.Digest, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mirror+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	v := digest.SHA256.Digester()
	_, err = io.Copy(v.Hash(), resp.Body)
	return resp.StatusCode, v.Digest(), err
}

// dfdaemon SIGKILLed while a client pulls a large blob through it, then
// started again on the same data directory: the leftover ingest (corrupted
// here) is removed at start, and the pull through the new process returns
// the blob's digest.
func TestDfdaemonKilledMidDownload(t *testing.T) {
	skipShort(t)
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/crash", "1", 24*mib)
	require.NoError(t, err)
	layer := img.Layers[0].Digest
	upstream := throttledProxy(t, reg.URL.String(), 8*mib)
	// The dead dfdaemon's assignments free their slots within seconds.
	sn := startSupernode(t, "--config", writeConfig(t, "scheduler:\n  peerTTL: 2s\n  assignmentTimeout: 3s\n"))
	dataDir := filepath.Join(t.TempDir(), "dfdaemon")
	ingest := filepath.Join(dataDir, "content", "ingest")

	first := startDfdaemonProc(t, sn.addr, upstream, dataDir)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pulled := make(chan error, 1)
	go func() {
		st, got, err := getBlob(ctx, first.addr, img.Repo, layer)
		if err == nil && st == http.StatusOK && got == layer {
			err = errors.New("the pull finished before the kill")
		}
		pulled <- err
	}()
	require.Eventually(t, func() bool { return ingestBytes(ingest) >= 8*mib },
		time.Minute, 10*time.Millisecond, "dfdaemon never stored 8 MiB of the blob")
	require.NoError(t, first.cmd.Process.Kill())
	select {
	case err := <-first.done:
		first.done <- err
		require.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("dfdaemon did not die")
	}
	require.Error(t, <-pulled, "the client must see the broken pull")
	require.Positive(t, corruptIngests(t, ingest), "no leftover ingest to corrupt")

	second := startDfdaemonProc(t, sn.addr, upstream, dataDir)
	require.Zero(t, ingestBytes(ingest), "the restart removes every leftover ingest")
	st, got, err := getBlob(ctx, second.addr, img.Repo, layer)
	require.NoError(t, err, second.stderr.String())
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, layer, got)
	require.FileExists(t, filepath.Join(dataDir, "content", "blobs", "sha256", layer.Encoded()))
}

// The dfdaemon's data directory fills up during a pull: the client gets an
// error (never the whole blob), the daemon stays up, nothing is committed
// or left in the ingest, and once there is space again the next pull works.
func TestDfdaemonDiskFull(t *testing.T) {
	skipShort(t)
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dataDir := t.TempDir()
	if err := syscall.Mount("tmpfs", dataDir, "tmpfs", 0, "size=8m,mode=0750"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dataDir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dataDir, err)
		}
	})

	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/full", "1", 20*mib)
	require.NoError(t, err)
	layer := img.Layers[0].Digest
	sn := startSupernode(t)
	mirror := startDfdaemon(t, sn.addr, reg.URL.String(), "--data-dir", dataDir)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	start := time.Now()
	st, got, err := getBlob(ctx, mirror, img.Repo, layer)
	require.False(t, err == nil && st == http.StatusOK && got == layer, "a blob larger than the disk cannot be served whole")
	require.Less(t, time.Since(start), 30*time.Second, "the pull must fail at once, not at a stall timeout")
	t.Logf("pull on a full disk: status %d, error %v", st, err)
	require.True(t, healthy(mirror), "the daemon stays up")
	blob := filepath.Join(dataDir, "content", "blobs", "sha256", layer.Encoded())
	require.NoFileExists(t, blob)
	ingest := filepath.Join(dataDir, "content", "ingest")
	require.Eventually(t, func() bool { return ingestBytes(ingest) == 0 },
		10*time.Second, 20*time.Millisecond, "the failed ingest is removed")

	require.NoError(t, syscall.Mount("tmpfs", dataDir, "tmpfs", syscall.MS_REMOUNT, "size=64m"))
	st, got, err = getBlob(ctx, mirror, img.Repo, layer)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, layer, got)
	require.FileExists(t, blob)
}
