package cmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/adminapi"
)

func TestMain(m *testing.M) {
	// The embedded registry of the preheat tests starts a notification
	// broadcaster that has no way to stop.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

// syncBuffer is a goroutine-safe log sink.
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

func noEnv(string) (string, bool) { return "", false }

type supernode struct {
	base    string
	cluster string // the cluster token it generated or was given
	logs    *syncBuffer
	stop    func()
}

// start runs a supernode in this process until the test ends.
func start(t *testing.T, args []string, opts ...Option) *supernode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	logs := &syncBuffer{}
	opts = append([]Option{withEnv(noEnv), WithStderr(logs), WithReady(func(a net.Addr) { ready <- a })}, opts...)
	go func() { done <- Run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), opts...) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Error("supernode did not stop")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case a := <-ready:
		sn := &supernode{base: "http://" + a.String(), logs: logs, stop: stop}
		if i := slices.Index(args, "--data-dir"); i >= 0 && i+1 < len(args) {
			if b, err := os.ReadFile(filepath.Join(args[i+1], clusterauth.FileName)); err == nil {
				sn.cluster = strings.TrimSpace(string(b))
			}
		}
		return sn
	case err := <-done:
		t.Fatalf("supernode exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("supernode did not start")
	}
	return nil
}

func (s *supernode) do(t *testing.T, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.base+path, r)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// member calls the peer API or the upload server with the cluster token.
func (s *supernode) member(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	require.NotEmpty(t, s.cluster, "the supernode's cluster token")
	return s.do(t, method, path, s.cluster, body)
}

func TestServesHealthMetricsAndAdmin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sn := start(t, []string{"--data-dir", dir, "--admin-token", "t0ken"})

	status, body := sn.do(t, http.MethodGet, "/healthz", "", nil)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ok", strings.TrimSpace(string(body)))

	status, body = sn.do(t, http.MethodGet, "/metrics", "", nil)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(body), "go_goroutines")
	require.Contains(t, string(body), "damselfly_scheduler_tasks")
	require.Contains(t, string(body), "damselfly_cdn_source_bytes_total")

	status, _ = sn.do(t, http.MethodGet, "/api/v1/tasks", "", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = sn.do(t, http.MethodGet, "/api/v1/tasks", "wrong", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	status, body = sn.do(t, http.MethodGet, "/api/v1/tasks", "t0ken", nil)
	require.Equal(t, http.StatusOK, status, string(body))

	// The peer API and the upload server answer outsiders 401, whatever
	// they ask; the admin token is not the cluster token.
	for _, tok := range []string{"", "t0ken"} {
		status, _ = sn.do(t, http.MethodPost, schedapi.RegisterPath(), tok, map[string]string{"url": "ftp://x"})
		require.Equal(t, http.StatusUnauthorized, status)
		status, _ = sn.do(t, http.MethodGet, upload.Path(taskid.ID(strings.Repeat("a", 64))), tok, nil)
		require.Equal(t, http.StatusUnauthorized, status)
	}
	// The peer API answers a member's malformed input with 4xx.
	status, _ = sn.member(t, http.MethodPost, schedapi.RegisterPath(), map[string]string{"url": "ftp://x"})
	require.Equal(t, http.StatusBadRequest, status)
	// The upload server is mounted.
	status, _ = sn.member(t, http.MethodGet, upload.Path(taskid.ID(strings.Repeat("a", 64))), nil)
	require.Equal(t, http.StatusNotFound, status)
}

func TestGeneratedAdminToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sn := start(t, []string{"--data-dir", dir})
	b, err := os.ReadFile(filepath.Join(dir, adminTokenFile))
	require.NoError(t, err)
	token := strings.TrimSpace(string(b))
	require.Len(t, token, 64)
	fi, err := os.Stat(filepath.Join(dir, adminTokenFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	status, _ := sn.do(t, http.MethodGet, "/api/v1/peers", token, nil)
	require.Equal(t, http.StatusOK, status)
	sn.stop()
	require.Contains(t, sn.logs.String(), filepath.Join(dir, adminTokenFile))
	require.NotContains(t, sn.logs.String(), token, "the token is never logged")

	// A restart keeps the token.
	sn = start(t, []string{"--data-dir", dir})
	status, _ = sn.do(t, http.MethodGet, "/api/v1/peers", token, nil)
	require.Equal(t, http.StatusOK, status)
}

func TestEnvAdminToken(t *testing.T) {
	t.Parallel()
	env := func(k string) (string, bool) {
		if k == EnvAdminToken {
			return "from-env", true
		}
		return "", false
	}
	sn := start(t, []string{"--data-dir", t.TempDir()}, withEnv(env))
	status, _ := sn.do(t, http.MethodGet, "/api/v1/tasks", "from-env", nil)
	require.Equal(t, http.StatusOK, status)
}

func TestBadConfigFailsBeforeListening(t *testing.T) {
	t.Parallel()
	cfgFile := func(body string) string {
		p := filepath.Join(t.TempDir(), "supernode.yaml")
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"bad listen", []string{"--listen", "nowhere"}, []string{"listen", "host:port"}},
		{"bad listen port", []string{"--listen", "127.0.0.1:70000"}, []string{"listen", "port"}},
		{"unknown policy", []string{"--config", cfgFile("scheduler:\n  policy: fastest-first\n")}, []string{"fastest-first"}},
		{"several problems", []string{"--config", cfgFile("scheduler:\n  peerUploadSlots: -1\nlog:\n  level: loud\n"), "--advertise-addr", "0.0.0.0:1"},
			[]string{"peerUploadSlots", "log.level", "advertiseAddr"}},
		{"unknown key", []string{"--config", cfgFile("listne: :1\n")}, []string{"listne"}},
		{"preheat key misspelt", []string{"--config", cfgFile("preheat:\n  insecureRegistry: [r:5000]\n  timeout: 1x\n")},
			[]string{"preheat.insecureRegistry (line 2): unknown key (did you mean insecureRegistries?)", "preheat.timeout (line 3)"}},
		{"bad source network", []string{"--config", cfgFile("source:\n  allow: [10.0.0.0/33]\n  deny: [bad_host]\n")}, []string{"source.allow", "10.0.0.0/33", "source.deny", "bad_host"}},
		{"bad source flag", []string{"--source-deny", "10.0.0.0/8,http://x"}, []string{"source-deny", "http://x"}},
		{"negative fetch timeout", []string{"--config", cfgFile("cdn:\n  fetchTimeout: -1s\n")}, []string{"cdn.fetchTimeout"}},
		{"bad upload rate", []string{"--config", cfgFile("cdn:\n  uploadRate: fast\n")}, []string{"fast"}},
		{"bad upload rate flag", []string{"--upload-rate", "-5M"}, []string{"upload-rate"}},
		{"missing config file", []string{"--config", "/nonexistent/supernode.yaml"}, []string{"config"}},
		{"unknown flag", []string{"--colour"}, []string{"colour"}},
		{"stray argument", []string{"serve"}, []string{"serve"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			readyCalled := false
			args := append([]string{"--data-dir", t.TempDir()}, tt.args...)
			err := Run(t.Context(), args, withEnv(noEnv), WithStdout(&out), WithStderr(io.Discard),
				WithReady(func(net.Addr) { readyCalled = true }))
			require.Error(t, err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
			require.False(t, readyCalled, "nothing listens")
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, Run(t.Context(), []string{"--version"}, WithStdout(&out)))
	require.True(t, strings.HasPrefix(out.String(), "supernode "), out.String())

	out.Reset()
	require.NoError(t, Run(t.Context(), []string{"--help"}, WithStdout(&out)))
	for _, f := range []string{"--config", "-listen", "-data-dir", "-advertise-addr", "-admin-token", "-upload-rate", "-log-level", "-log-format"} {
		require.Contains(t, out.String(), strings.TrimLeft(f, "-"))
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "supernode.yaml")
	require.NoError(t, os.WriteFile(p, []byte(`
listen: 127.0.0.1:9999
advertiseAddr: sn.example:8002
dataDir: /from/file
source:
  allow: [10.0.0.0/8]
scheduler:
  peerTTL: 3s
cdn:
  fetchTimeout: 5m
  uploadRate: 1G
log:
  level: warn
`), 0o600))
	var f flags
	fset := newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse([]string{"--config", p, "--listen", "127.0.0.1:0", "--source-allow", "127.0.0.1, ::1",
		"--source-allow", "registry.local", "--source-deny", "10.9.0.0/16", "--source-deny", "192.0.2.1", "--upload-rate", "500M"}))
	cfg, err := buildConfig(fset, &f, noEnv)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:0", cfg.Listen, "flags override the file")
	require.Equal(t, "sn.example:8002", cfg.AdvertiseAddr)
	require.Equal(t, "/from/file", cfg.DataDir)
	require.Equal(t, filepath.Join("/from/file", "cdn"), cfg.CDN.Dir)
	require.Equal(t, []string{"10.0.0.0/8", "127.0.0.1", "::1", "registry.local"}, cfg.Source.Allow)
	require.Equal(t, []string{"10.9.0.0/16", "192.0.2.1"}, cfg.Source.Deny)
	require.Equal(t, 3*time.Second, cfg.Scheduler.PeerTTL)
	require.Equal(t, 5*time.Minute, cfg.CDN.FetchTimeout)
	require.Equal(t, ratelimit.Rate(500<<20), cfg.CDN.UploadRate, "the flag overrides cdn.uploadRate")
	require.Equal(t, "warn", cfg.Log.Level)
	require.Equal(t, "console", cfg.Log.Format, "defaults fill the rest")
}

func TestDocsConfigIsValid(t *testing.T) {
	t.Parallel()
	var cfg Config
	err := command.LoadYAML(filepath.Join("..", "..", "docs", "supernode.yaml"), &cfg)
	require.NoError(t, err)
	require.NoError(t, cfg.ApplyDefaults().Validate())
	want := Config{}.ApplyDefaults()
	require.Equal(t, want, cfg.ApplyDefaults(), "the documented config is the default")
}

func TestAdvertiseFrom(t *testing.T) {
	t.Parallel()
	require.Equal(t, "127.0.0.1:8002", advertiseFrom(&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8002}))
	got := advertiseFrom(&net.TCPAddr{IP: net.IPv4zero, Port: 8002})
	host, port, err := net.SplitHostPort(got)
	require.NoError(t, err)
	require.Equal(t, "8002", port)
	ip := net.ParseIP(host)
	require.NotNil(t, ip)
	require.NotNil(t, ip.To4())
	require.False(t, ip.IsUnspecified())
}

// origin serves one blob and counts GETs.
func newOrigin(t *testing.T, body []byte) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

func TestPeerFlowAndRestart(t *testing.T) {
	t.Parallel()
	body := make([]byte, 9<<20+17)
	for i := range body {
		body[i] = byte(i * 7)
	}
	d := digest.FromBytes(body)
	origin, gets := newOrigin(t, body)
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--admin-token", "tok", "--source-allow", "127.0.0.1/32"}
	sn := start(t, args)

	peer := schedapi.Peer{ID: "peer-a", Addr: "127.0.0.1:1"}
	reg := schedapi.RegisterRequest{Peer: peer, URL: origin.URL + "/blob?token=secret", Digest: d.String()}
	status, b := sn.member(t, http.MethodPost, schedapi.RegisterPath(), reg)
	require.Equal(t, http.StatusOK, status, string(b))
	var rr schedapi.RegisterResponse
	require.NoError(t, json.Unmarshal(b, &rr))
	require.Equal(t, d.String(), rr.TaskID)
	require.NotEqual(t, schedapi.TaskFailed, rr.State, rr.Error)
	require.Equal(t, 3, rr.PieceCount)

	// Fetch every piece from wherever the scheduler says, as a peer would.
	got := make([]byte, len(body))
	have := map[int]bool{}
	for round := 0; len(have) < rr.PieceCount && round < 50; round++ {
		status, b = sn.member(t, http.MethodGet, schedapi.PiecesPath(rr.TaskID, peer.ID)+"?wait=2s", nil)
		require.Equal(t, http.StatusOK, status, string(b))
		var pr schedapi.PiecesResponse
		require.NoError(t, json.Unmarshal(b, &pr))
		var results []schedapi.PieceResult
		for _, a := range pr.Assignments {
			require.True(t, a.FromCDN)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+a.From.Addr+upload.Path(taskid.ID(rr.TaskID)), nil)
			require.NoError(t, err)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", a.Offset, a.Offset+a.Length-1))
			req.Header.Set("Authorization", "Bearer "+sn.cluster)
			if a.Arriving {
				// Still arriving at the CDN (cut-through): the digest
				// comes in the trailer.
				req.Header.Set(schedapi.HeaderArriving, "1")
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			data, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, http.StatusPartialContent, resp.StatusCode)
			if a.Arriving {
				require.Empty(t, a.Digest)
				a.Digest = resp.Trailer.Get(schedapi.TrailerPieceDigest)
			}
			sum := sha256.Sum256(data)
			require.Equal(t, a.Digest, "sha256:"+fmt.Sprintf("%x", sum), "piece %d", a.Piece)
			copy(got[a.Offset:], data)
			have[a.Piece] = true
			results = append(results, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, OK: true, Bytes: int64(len(data))})
		}
		if len(results) > 0 {
			status, b = sn.member(t, http.MethodPost, schedapi.ReportPath(rr.TaskID, peer.ID), schedapi.ReportRequest{Results: results})
			require.Equal(t, http.StatusNoContent, status, string(b))
		}
	}
	require.Len(t, have, rr.PieceCount)
	require.Equal(t, body, got)
	require.EqualValues(t, 1, gets.Load())

	var task adminapi.Task
	require.Eventually(t, func() bool {
		status, b = sn.do(t, http.MethodGet, "/api/v1/tasks/"+rr.TaskID, "tok", nil)
		require.Equal(t, http.StatusOK, status, string(b))
		require.NoError(t, json.Unmarshal(b, &task))
		return task.State == string(schedapi.TaskSucceeded)
	}, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, int64(len(body)), task.BytesFromSource)
	require.Equal(t, int64(len(body)), task.BytesFromCDN)
	require.NotContains(t, task.URL, "secret")
	sn.stop()
	require.NotContains(t, sn.logs.String(), "secret", "query strings are not logged")

	// After a restart over the same data dir the task is served from the
	// cache: no request to the origin.
	sn = start(t, args)
	status, b = sn.member(t, http.MethodPost, schedapi.RegisterPath(), reg)
	require.Equal(t, http.StatusOK, status, string(b))
	require.NoError(t, json.Unmarshal(b, &rr))
	require.Equal(t, schedapi.TaskSucceeded, rr.State)
	require.EqualValues(t, 1, gets.Load())

	// An operator deletes it; the next registration fetches again.
	status, b = sn.do(t, http.MethodDelete, "/api/v1/tasks/"+rr.TaskID, "tok", nil)
	require.Equal(t, http.StatusNoContent, status, string(b))
	status, _ = sn.do(t, http.MethodGet, "/api/v1/tasks/"+rr.TaskID, "tok", nil)
	require.Equal(t, http.StatusNotFound, status)
	status, b = sn.member(t, http.MethodPost, schedapi.RegisterPath(), reg)
	require.Equal(t, http.StatusOK, status, string(b))
	require.EqualValues(t, 2, gets.Load())
}

func TestSourcePolicyDeniesLoopback(t *testing.T) {
	t.Parallel()
	origin, gets := newOrigin(t, []byte("private"))
	sn := start(t, []string{"--data-dir", t.TempDir()})
	u := origin.URL + "/metadata"
	status, b := sn.member(t, http.MethodPost, schedapi.RegisterPath(), schedapi.RegisterRequest{
		Peer: schedapi.Peer{ID: "p", Addr: "127.0.0.1:1"}, URL: u,
	})
	require.Equal(t, http.StatusOK, status, string(b))
	var rr schedapi.RegisterResponse
	require.NoError(t, json.Unmarshal(b, &rr))
	require.Equal(t, schedapi.TaskFailed, rr.State)
	require.Contains(t, rr.Error, "denied by the outbound policy")
	require.Contains(t, rr.Error, "--source-allow", "the error says how to allow it")
	id, err := taskid.ForURL(u, nil, "")
	require.NoError(t, err)
	require.Equal(t, id.String(), rr.TaskID)
	require.Zero(t, gets.Load(), "the origin was never contacted")
}

func TestSourcePolicyChecksRedirectHops(t *testing.T) {
	t.Parallel()
	origin, gets := newOrigin(t, []byte("private"))
	// Only 127.0.0.2 is allowed: the redirector there sends the CDN to the
	// origin on 127.0.0.1, which it must not reach.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	}
	redirector := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, origin.URL+"/secret", http.StatusFound)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = redirector.Serve(ln) }()
	t.Cleanup(func() { _ = redirector.Close() })
	sn := start(t, []string{"--data-dir", t.TempDir(), "--source-allow", "127.0.0.2"})
	status, b := sn.member(t, http.MethodPost, schedapi.RegisterPath(), schedapi.RegisterRequest{
		Peer: schedapi.Peer{ID: "p", Addr: "127.0.0.1:1"}, URL: "http://" + ln.Addr().String() + "/start",
	})
	require.Equal(t, http.StatusOK, status, string(b))
	var rr schedapi.RegisterResponse
	require.NoError(t, json.Unmarshal(b, &rr))
	require.Equal(t, schedapi.TaskFailed, rr.State)
	require.Contains(t, rr.Error, "denied by the outbound policy")
	require.Zero(t, gets.Load(), "the redirect target was never contacted")
}

func TestWithSourceClient(t *testing.T) {
	t.Parallel()
	body := []byte("hello through the test seam")
	origin, gets := newOrigin(t, body)
	sn := start(t, []string{"--data-dir", t.TempDir()}, WithSourceClient(origin.Client()))
	status, b := sn.member(t, http.MethodPost, schedapi.RegisterPath(), schedapi.RegisterRequest{
		Peer: schedapi.Peer{ID: "p", Addr: "127.0.0.1:1"}, URL: origin.URL + "/x",
	})
	require.Equal(t, http.StatusOK, status, string(b))
	var rr schedapi.RegisterResponse
	require.NoError(t, json.Unmarshal(b, &rr))
	require.NotEqual(t, schedapi.TaskFailed, rr.State, rr.Error)
	require.EqualValues(t, 1, gets.Load())
}

// The cluster token: generated once into the data dir (0600, never logged,
// kept over a restart, distinct from the admin token) unless the
// environment or a file gives it; "new,old" accepts both while rotating.
func TestClusterToken(t *testing.T) {
	t.Parallel()
	register := func(sn *supernode, tok string) int {
		status, _ := sn.do(t, http.MethodPost, schedapi.RegisterPath(), tok, map[string]string{"url": "ftp://x"})
		return status // 400 once past the token check
	}
	t.Run("generated", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		sn := start(t, []string{"--data-dir", dir})
		path := filepath.Join(dir, clusterauth.FileName)
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		require.Len(t, sn.cluster, 64)
		admin, err := os.ReadFile(filepath.Join(dir, adminTokenFile))
		require.NoError(t, err)
		require.NotEqual(t, strings.TrimSpace(string(admin)), sn.cluster)
		require.Equal(t, http.StatusBadRequest, register(sn, sn.cluster))
		require.Equal(t, http.StatusUnauthorized, register(sn, strings.TrimSpace(string(admin))), "the admin token is not a cluster token")
		tok := sn.cluster
		sn.stop()
		require.Contains(t, sn.logs.String(), path)
		require.NotContains(t, sn.logs.String(), tok, "the token is never logged")
		sn = start(t, []string{"--data-dir", dir})
		require.Equal(t, tok, sn.cluster, "a restart keeps the token")
		require.Equal(t, http.StatusBadRequest, register(sn, tok))
	})
	t.Run("environment, rotating", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		env := func(k string) (string, bool) {
			return "new-cluster-token-0123456789,old-cluster-token-0123456789", k == clusterauth.EnvToken
		}
		sn := start(t, []string{"--data-dir", dir}, withEnv(env))
		_, err := os.Stat(filepath.Join(dir, clusterauth.FileName))
		require.ErrorIs(t, err, fs.ErrNotExist, "nothing generated when the environment gives the token")
		require.Equal(t, http.StatusBadRequest, register(sn, "new-cluster-token-0123456789"))
		require.Equal(t, http.StatusBadRequest, register(sn, "old-cluster-token-0123456789"))
		require.Equal(t, http.StatusUnauthorized, register(sn, "other-cluster-token-0123456789"))
		sn.stop()
		require.NotContains(t, sn.logs.String(), "cluster-token-0123456789")
	})
	t.Run("file flag wins over the environment", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		file := filepath.Join(t.TempDir(), "token")
		require.NoError(t, os.WriteFile(file, []byte("from-file-token-0123456789\n"), 0o600))
		env := func(k string) (string, bool) { return "from-env-token-0123456789", k == clusterauth.EnvToken }
		sn := start(t, []string{"--data-dir", dir, "--cluster-token-file", file}, withEnv(env))
		require.Equal(t, http.StatusBadRequest, register(sn, "from-file-token-0123456789"))
		require.Equal(t, http.StatusUnauthorized, register(sn, "from-env-token-0123456789"))
	})
}
