package cmd

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/peer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseArgs(t *testing.T) {
	t.Parallel()
	dgst := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, o *flags)
	}{
		{"minimal", []string{"-u", "http://o/f", "-o", "out"}, "", func(t *testing.T, o *flags) {
			require.Equal(t, "http://o/f", o.url)
			require.Equal(t, "out", o.output)
			require.Equal(t, []string{"127.0.0.1:8002"}, o.supernodes)
			require.Equal(t, ":0", o.peerListen)
			require.False(t, o.notbs)
			require.Zero(t, o.timeout)
		}},
		{"long names and everything", []string{
			"--url", "http://o/f?sig=1&x=2", "--output", "out", "--node", "10.0.0.1:8002, 10.0.0.2:8002",
			"--digest", dgst, "--header", "Authorization: Bearer t", "--header", "x-extra:  v2 ",
			"--filter", "sig&exp", "--identifier", "id1", "--locallimit", "20M", "--totallimit", "1GiB",
			"--notbs", "--timeout", "90s", "--piece-timeout", "5s", "--stall-timeout", "7s", "--peer-listen", "127.0.0.1:0", "--advertise-ip", "10.1.2.3",
			"--data-dir", "/tmp/d", "--log-level", "debug", "--log-format", "json", "--quiet",
		}, "", func(t *testing.T, o *flags) {
			require.Equal(t, []string{"10.0.0.1:8002", "10.0.0.2:8002"}, o.supernodes)
			require.Equal(t, digest.Digest(dgst), o.digest)
			require.Equal(t, http.Header{"Authorization": {"Bearer t"}, "X-Extra": {"v2"}}, o.header)
			require.Equal(t, []string{"sig", "exp"}, o.filter)
			require.Equal(t, "id1", o.identifier)
			require.Equal(t, int64(20<<20), o.localLimit)
			require.Equal(t, int64(1<<30), o.totalLimit)
			require.True(t, o.notbs)
			require.Equal(t, 90*time.Second, o.timeout)
			require.Equal(t, 5*time.Second, o.pieceTimeout)
			require.Equal(t, 7*time.Second, o.stallTimeout)
			require.Equal(t, "10.1.2.3", o.advertiseIP)
			require.Equal(t, "/tmp/d", o.dataDir)
			require.Equal(t, "json", o.log.Format)
			require.True(t, o.quiet)
		}},
		{"missing url", []string{"-o", "out"}, "-u URL is required", nil},
		{"missing output", []string{"-u", "http://o/f"}, "-o FILE is required", nil},
		{"bad url", []string{"-u", "ftp://o/f", "-o", "out"}, "scheme must be http or https", nil},
		{"bad rate", []string{"-u", "http://o/f", "-o", "out", "--locallimit", "fast"}, `rate "fast"`, nil},
		{"zero rate", []string{"-u", "http://o/f", "-o", "out", "--totallimit", "0"}, "out of range", nil},
		{"bad digest", []string{"-u", "http://o/f", "-o", "out", "--digest", "md5:abc"}, "want sha256:<64 hex>", nil},
		{"short digest", []string{"-u", "http://o/f", "-o", "out", "--digest", "sha256:abc"}, "want sha256:<64 hex>", nil},
		{"bad header", []string{"-u", "http://o/f", "-o", "out", "--header", "no colon"}, "want 'Name: value'", nil},
		{"bad header name", []string{"-u", "http://o/f", "-o", "out", "--header", "a b: c"}, "want 'Name: value'", nil},
		{"bad node", []string{"-u", "http://o/f", "-o", "out", "--node", "nohost"}, "want host:port", nil},
		{"bad advertise ip", []string{"-u", "http://o/f", "-o", "out", "--advertise-ip", "host"}, "not an IP address", nil},
		{"bad log level", []string{"-u", "http://o/f", "-o", "out", "--log-level", "loud"}, "log.level", nil},
		{"negative timeout", []string{"-u", "http://o/f", "-o", "out", "--timeout", "-1s"}, "must not be negative", nil},
		{"negative piece timeout", []string{"-u", "http://o/f", "-o", "out", "--piece-timeout", "-1s"}, "must not be negative", nil},
		{"negative stall timeout", []string{"-u", "http://o/f", "-o", "out", "--stall-timeout", "-1s"}, "must not be negative", nil},
		{"unknown flag", []string{"-u", "http://o/f", "-o", "out", "--fast"}, "not defined: -fast", nil},
		{"extra argument", []string{"-u", "http://o/f", "-o", "out", "more"}, `unexpected argument "more"`, nil},
		{"range", []string{"-u", "http://o/f", "-o", "out", "--range", "10-19"}, "", func(t *testing.T, o *flags) { require.Equal(t, "bytes=10-19", o.rng) }},
		{"range with unit", []string{"-u", "http://o/f", "-o", "out", "--range", "bytes=10-"}, "", func(t *testing.T, o *flags) { require.Equal(t, "bytes=10-", o.rng) }},
		{"range suffix", []string{"-u", "http://o/f", "-o", "out", "--range", "-100"}, "", func(t *testing.T, o *flags) { require.Equal(t, "bytes=-100", o.rng) }},
		{"no range", []string{"-u", "http://o/f", "-o", "out"}, "", func(t *testing.T, o *flags) { require.Empty(t, o.rng) }},
		{"several ranges", []string{"-u", "http://o/f", "-o", "out", "--range", "0-1,5-9"}, "want a-b, a- or -n", nil},
		{"inverted range", []string{"-u", "http://o/f", "-o", "out", "--range", "9-1"}, "want a-b, a- or -n", nil},
		{"empty range", []string{"-u", "http://o/f", "-o", "out", "--range", "-0"}, "want a-b, a- or -n", nil},
		{"range garbage", []string{"-u", "http://o/f", "-o", "out", "--range", "items=1-2"}, "want a-b, a- or -n", nil},
		{"help", []string{"--help"}, "", func(t *testing.T, o *flags) { require.True(t, o.help) }},
		{"version needs nothing else", []string{"--version"}, "", func(t *testing.T, o *flags) { require.True(t, o.version) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, _, err := parseArgs(tt.args)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrUsage)
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, o)
		})
	}
}

// At any terminal width the line fits, keeps the percent and the rate,
// and gives up the sources' share and then the bar before cutting.
func TestRenderProgressFitsWidth(t *testing.T) {
	t.Parallel()
	p := peer.Progress{Size: 100 << 20, Completed: 50 << 20, FromPeers: 30 << 20, FromCDN: 20 << 20}
	status := " - supernode 10.0.0.5:8002 unreachable for 3s"
	for _, w := range []int{20, 40, 60, 79, 100, 160} {
		line := renderProgress(p, 5*time.Second, status, w)
		require.LessOrEqual(t, len(line), w, "width %d: %q", w, line)
		if w >= 40 {
			require.Contains(t, line, "50.0%", "width %d", w)
			require.Contains(t, line, "10.0 MiB/s", "width %d", w)
		}
	}
	require.Contains(t, renderProgress(p, 5*time.Second, "", 160), "(peers 60%, cdn 40%, source 0%)")
	require.Contains(t, renderProgress(p, 5*time.Second, "", 160), "[")
	require.NotContains(t, renderProgress(p, 5*time.Second, "", 60), "peers", "the share goes first")
	require.Equal(t, "dfget: 50.0 MiB in 5s (10.0 MiB/s), from peers 60%, the CDN 40%, the source 0%", renderSummary(p, 5*time.Second))
}

func TestRenderProgress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		p       peer.Progress
		elapsed time.Duration
		want    string
	}{
		{"start", peer.Progress{Size: 100 << 20}, 0,
			"[>                       ]   0.0% 0 B/100.0 MiB 0 B/s ETA --"},
		{"half from peers and cdn", peer.Progress{Size: 100 << 20, Completed: 50 << 20, FromPeers: 30 << 20, FromCDN: 20 << 20}, 5 * time.Second,
			"[============>           ]  50.0% 50.0 MiB/100.0 MiB 10.0 MiB/s ETA 5s (peers 60%, cdn 40%, source 0%)"},
		{"done from source", peer.Progress{Size: 1536, Completed: 1536, FromSource: 1536}, time.Second,
			"[========================] 100.0% 1.5 KiB/1.5 KiB 1.5 KiB/s ETA 0s (peers 0%, cdn 0%, source 100%)"},
		{"unknown size", peer.Progress{Size: -1, Completed: 3 << 30, FromSource: 3 << 30}, 3 * time.Second,
			"3.0 GiB 1.0 GiB/s (peers 0%, cdn 0%, source 100%)"},
		{"empty", peer.Progress{Size: 0}, time.Second,
			"[========================] 100.0% 0 B/0 B 0 B/s ETA 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, renderProgress(tt.p, tt.elapsed, "", 0))
		})
	}
}

// origin serves data at /file and 404 elsewhere; /slow never answers.
func newOrigin(t *testing.T, data []byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/file":
			http.ServeContent(w, r, "file", time.Time{}, bytes.NewReader(data))
		case "/slow":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func deadNode(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runDfget(t *testing.T, ctx context.Context, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr syncBuffer
	base := []string{"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
		"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
		"--cluster-token-file", tokenFile(t)}
	err := Run(ctx, append(base, args...), &stdout, &stderr, withEnv(noEnv))
	return stdout.String(), stderr.String(), err
}

// tokenFile writes a cluster token for dfget to present and returns its path.
func tokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster-token")
	require.NoError(t, os.WriteFile(p, []byte("dfget-test-cluster-token-0123456789\n"), 0o600))
	return p
}

func noEnv(string) (string, bool) { return "", false }

// Without a cluster token dfget says at once which token it needs and where
// to put it, and writes nothing.
func TestNoClusterToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var stdout, stderr syncBuffer
	err := Run(t.Context(), []string{"-u", "http://127.0.0.1:1/f", "-o", filepath.Join(dir, "out"), "--node", deadNode(t), "--quiet"},
		&stdout, &stderr, withEnv(noEnv))
	require.ErrorIs(t, err, clusterauth.ErrNoToken)
	require.Contains(t, err.Error(), clusterauth.EnvToken)
	require.Contains(t, err.Error(), "--cluster-token-file")
	require.Empty(t, dirEntries(t, dir))

	err = Run(t.Context(), []string{"-u", "http://127.0.0.1:1/f", "-o", filepath.Join(dir, "out"), "--node", deadNode(t), "--quiet"},
		&stdout, &stderr, withEnv(func(k string) (string, bool) { return "a,b,c", k == clusterauth.EnvToken }))
	require.ErrorContains(t, err, "$"+clusterauth.EnvToken)
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// With no supernode, dfget says so, downloads from the source and leaves
// only the output file. Several run at once in one process.
func TestFallsBackToSource(t *testing.T) {
	t.Parallel()
	data := make([]byte, 5<<20+321)
	_, err := rand.Read(data)
	require.NoError(t, err)
	origin := newOrigin(t, data)
	node := deadNode(t)
	for _, name := range []string{"one", "two", "three"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "out.bin")
			_, stderr, err := runDfget(t, t.Context(), "-u", origin.URL+"/file", "-o", out, "--node", node,
				"--digest", digest.FromBytes(data).String(), "--locallimit", "1G")
			require.NoError(t, err, stderr)
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			require.Equal(t, data, got)
			require.Contains(t, stderr, "dfget: P2P failed (supernode "+node+" unreachable), downloading from source")
			require.Equal(t, []string{"out.bin"}, dirEntries(t, dir), "the data dir is removed")
		})
	}
}

func TestFailures(t *testing.T) {
	t.Parallel()
	data := []byte("some content")
	origin := newOrigin(t, data)
	node := deadNode(t)
	wrong := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"notbs", []string{"-u", origin.URL + "/file", "--notbs"},
			"supernode " + node + " unreachable and --notbs set"},
		{"digest mismatch", []string{"-u", origin.URL + "/file", "--digest", wrong},
			"digest mismatch: want " + wrong + ", got " + digest.FromBytes(data).String()},
		{"source not found", []string{"-u", origin.URL + "/missing"},
			"source: fetch " + origin.URL + "/missing: status 404"},
		{"timeout", []string{"-u", origin.URL + "/slow", "--timeout", "300ms"},
			"timed out after 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "out.bin")
			args := append([]string{"-o", out, "--node", node, "--quiet"}, tt.args...)
			_, stderr, err := runDfget(t, t.Context(), args...)
			require.Error(t, err)
			require.NotErrorIs(t, err, ErrUsage)
			require.Contains(t, err.Error(), tt.want)
			require.NotContains(t, err.Error(), "\n", "one line")
			require.Empty(t, dirEntries(t, dir), "no output file, no leftovers")
			require.NotContains(t, stderr, "downloading from source", "--quiet")
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	t.Parallel()
	stdout, _, err := runDfget(t, t.Context(), "--help")
	require.NoError(t, err)
	require.Contains(t, stdout, "Usage: dfget -u URL -o FILE")
	require.Contains(t, stdout, "-notbs")
	stdout, _, err = runDfget(t, t.Context(), "--version")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(stdout, "dfget "))
}

func TestOutputChecks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, _, err := runDfget(t, t.Context(), "-u", "http://127.0.0.1:1/f", "-o", dir)
	require.ErrorContains(t, err, "is a directory")
	_, _, err = runDfget(t, t.Context(), "-u", "http://127.0.0.1:1/f", "-o", filepath.Join(dir, "no", "such", "f"))
	require.ErrorContains(t, err, "does not exist")
	require.False(t, errors.Is(err, ErrUsage))
}

func TestDownloadRateReported(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ local, total, want int64 }{
		{0, 0, 0},
		{5 << 20, 0, 5 << 20},
		{0, 7 << 20, 7 << 20},
		{5 << 20, 7 << 20, 5 << 20},
		{9 << 20, 7 << 20, 7 << 20},
	} {
		require.Equal(t, tt.want, downloadRate(tt.local, tt.total), "local %d total %d", tt.local, tt.total)
	}
}
