// Package supernodetest runs a real supernode in-process for other
// packages' tests.
package supernodetest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/supernode/cmd"
)

// Supernode is a supernode running in the test's process.
type Supernode struct {
	// Addr is its host:port.
	Addr string
	// DataDir is its --data-dir.
	DataDir string
	// Token is its admin token.
	Token string
	// ClusterTokenFile holds ClusterToken, for --cluster-token-file.
	ClusterTokenFile string

	stop func()
}

// ClusterToken is the cluster token of every supernode Start runs, so that
// several of them form one cluster.
const ClusterToken = "supernodetest-cluster-token-0123456789"

// Keys returns ClusterToken as keys, for clients and peers in tests.
func Keys() clusterauth.Keys { return clusterauth.MustParse(ClusterToken) }

// Start runs a supernode on 127.0.0.1:0 with its data under t.TempDir(),
// the given admin token, ClusterToken, loopback sources allowed and
// errors-only logs, then extraArgs (later flags win). It stops when the
// test ends, or earlier with Stop.
func Start(t testing.TB, adminToken string, extraArgs ...string) *Supernode {
	t.Helper()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "sn")
	tokenFile := filepath.Join(tmp, "cluster-token")
	if err := os.WriteFile(tokenFile, []byte(ClusterToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{
		"--listen", "127.0.0.1:0", "--data-dir", dir,
		"--admin-token", adminToken, "--cluster-token-file", tokenFile,
		"--log-level", "error", "--source-allow", "127.0.0.1/32",
	}, extraArgs...)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- cmd.Run(ctx, args, cmd.WithReady(func(a net.Addr) { ready <- a }))
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.Canceled) {
					t.Errorf("supernode exited: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("supernode did not stop within 20s")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case a := <-ready:
		return &Supernode{Addr: a.String(), DataDir: dir, Token: adminToken, ClusterTokenFile: tokenFile, stop: stop}
	case err := <-done:
		t.Fatalf("supernode did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("supernode did not start within 30s")
	}
	return nil
}

// Stop stops the supernode and waits for it; later calls do nothing.
func (s *Supernode) Stop() { s.stop() }
