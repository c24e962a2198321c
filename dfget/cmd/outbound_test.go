package cmd

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countingOrigin serves body on every path and counts requests.
func countingOrigin(t *testing.T, body string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// runPolicy runs dfget with a dead supernode, so it goes to the source,
// and the policy flags of args only.
func runPolicy(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr syncBuffer
	dir := t.TempDir()
	base := []string{"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1", "--node", deadNode(t),
		"--quiet", "-o", filepath.Join(dir, "out.bin"), "--cluster-token-file", tokenFile(t)}
	err := Run(t.Context(), append(base, args...), &stdout, &stderr, withEnv(noEnv))
	if err != nil {
		require.Empty(t, dirEntries(t, dir), "no output file, no leftovers")
	}
	return filepath.Join(dir, "out.bin"), err
}

func TestSourcePolicy(t *testing.T) {
	t.Parallel()
	origin, hits := countingOrigin(t, "secret")

	t.Run("loopback is refused by default", func(t *testing.T) {
		_, err := runPolicy(t, "-u", origin.URL+"/latest/meta-data/")
		require.Error(t, err)
		require.Contains(t, err.Error(), "denied by the outbound policy")
		require.Contains(t, err.Error(), "--source-allow", "the error says how to allow it")
		require.Zero(t, hits.Load(), "the origin was never contacted")
	})
	t.Run("link-local is refused by default", func(t *testing.T) {
		_, err := runPolicy(t, "-u", "http://169.254.169.254/latest/meta-data/")
		require.ErrorContains(t, err, "denied by the outbound policy")
	})
	t.Run("a deny entry beats the default allow", func(t *testing.T) {
		_, err := runPolicy(t, "-u", "http://192.0.2.1/x", "--source-deny", "192.0.2.0/24")
		require.ErrorContains(t, err, "denied by the outbound policy")
	})
	t.Run("allowed explicitly", func(t *testing.T) {
		out, err := runPolicy(t, "-u", origin.URL+"/file", "--source-allow", "10.0.0.0/8", "--source-allow", "127.0.0.1/32")
		require.NoError(t, err)
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		require.Equal(t, "secret", string(got))
	})
	t.Run("the peer allow list does not open the source", func(t *testing.T) {
		before := hits.Load()
		_, err := runPolicy(t, "-u", origin.URL+"/file", "--peer-allow", "127.0.0.1/32")
		require.ErrorContains(t, err, "denied by the outbound policy")
		require.Equal(t, before, hits.Load())
	})
}

func TestSourcePolicyChecksRedirectHops(t *testing.T) {
	t.Parallel()
	target, hits := countingOrigin(t, "secret")
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	}
	redirector := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/latest/meta-data/", http.StatusFound)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = redirector.Serve(ln) }()
	t.Cleanup(func() { _ = redirector.Close() })

	_, err = runPolicy(t, "-u", "http://"+ln.Addr().String()+"/start", "--source-allow", "127.0.0.2")
	require.ErrorContains(t, err, "denied by the outbound policy")
	require.Zero(t, hits.Load(), "the redirect target was never contacted")
}

func TestPolicyFlags(t *testing.T) {
	t.Parallel()
	o, _, err := parseArgs([]string{"-u", "http://x/y", "-o", "f", "--source-allow", "127.0.0.1/32,::1",
		"--source-allow", "registry.local", "--source-deny", "10.0.0.0/8", "--peer-allow", "10.1.0.0/16", "--peer-deny", "10.1.2.3"})
	require.NoError(t, err)
	require.Equal(t, []string{"127.0.0.1/32", "::1", "registry.local"}, o.sourcePolicy.Allow)
	require.Equal(t, []string{"10.0.0.0/8"}, o.sourcePolicy.Deny)
	require.Equal(t, []string{"10.1.0.0/16"}, o.peerPolicy.Allow)
	require.Equal(t, []string{"10.1.2.3"}, o.peerPolicy.Deny)
	for _, bad := range [][]string{{"--source-allow", "10.0.0.0/33"}, {"--peer-deny", "http://x"}} {
		_, _, err := parseArgs(append([]string{"-u", "http://x/y", "-o", "f"}, bad...))
		require.ErrorIs(t, err, ErrUsage, bad)
		require.ErrorContains(t, err, bad[0][2:], bad)
	}
}
