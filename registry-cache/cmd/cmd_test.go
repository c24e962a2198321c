package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// The embedded registry leaves its notification broadcasters running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

const acceptAll = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"

// start runs the command until the test ends and returns its base URL.
// The upstreams of these tests live on loopback, which it allows.
func start(t *testing.T, args ...string) string {
	t.Helper()
	return startPolicy(t, append([]string{"--source-allow", "127.0.0.1/32"}, args...)...)
}

// startPolicy is start with the default outbound policy.
func startPolicy(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...),
			WithLogger(zap.NewNop()), WithReady(func(a net.Addr) { ready <- a }))
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("not ready after 10s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err, "a clean shutdown")
		case <-time.After(15 * time.Second):
			t.Error("no shutdown after 15s")
		}
	})
	return "http://" + addr.String()
}

// client is an HTTP client whose connections are closed when the test ends.
func client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t *testing.T, hc *http.Client, u string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

func TestPullThroughTheBinary(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 2000, 3000)
	require.NoError(t, err)
	base := start(t, "--upstream", reg.URL.String())
	hc := client(t)
	reg.ResetStats()

	// 50 clients pull the manifest by tag at once: one upstream GET.
	var wg sync.WaitGroup
	bodies := make(chan []byte, 50)
	for range 50 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/v2/library/app/manifests/1", nil)
			req.Header.Set("Accept", acceptAll)
			resp, err := hc.Do(req)
			if err != nil {
				bodies <- nil
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				b = nil
			}
			bodies <- b
		})
	}
	wg.Wait()
	close(bodies)
	for b := range bodies {
		require.Equal(t, img.ManifestBody, b)
	}
	require.Equal(t, 1, reg.Stats().ManifestGETs["library/app:1"], "the registry saw one manifest GET for the tag")

	// By digest: from the cache, no upstream request.
	status, h, body := get(t, hc, base+"/v2/library/app/manifests/"+img.Manifest.String(), "Accept", acceptAll)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, img.ManifestBody, body)
	require.Equal(t, img.Manifest.String(), h.Get("Docker-Content-Digest"))
	require.Zero(t, reg.Stats().ManifestGETs["library/app:"+img.Manifest.String()])

	// The layers, as a pull would fetch them next.
	for _, d := range img.Blobs() {
		status, _, body := get(t, hc, base+"/v2/library/app/blobs/"+d.Digest.String())
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, d.Digest, digest.FromBytes(body))
	}

	// Unknown tag: 404 MANIFEST_UNKNOWN.
	status, h, body = get(t, hc, base+"/v2/library/app/manifests/missing", "Accept", acceptAll)
	require.Equal(t, http.StatusNotFound, status)
	require.Equal(t, "application/json", h.Get("Content-Type"))
	require.Contains(t, string(body), `"MANIFEST_UNKNOWN"`)

	// Health and metrics.
	status, _, body = get(t, hc, base+"/healthz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ok\n", string(body))
	status, _, body = get(t, hc, base+"/metrics")
	require.Equal(t, http.StatusOK, status)
	// 51 requests by tag (50, and the unknown one): each a hit, or a miss
	// that waited for the one fill of its key.
	require.Equal(t, 51.0, metric(t, body, `damselfly_registry_cache_hits_total{kind="tag"}`)+
		metric(t, body, `damselfly_registry_cache_misses_total{kind="tag"}`))
	require.Equal(t, 1.0, metric(t, body, `damselfly_registry_cache_hits_total{kind="digest"}`))
	require.Regexp(t, regexp.MustCompile(`(?m)^damselfly_registry_cache_upstream_requests_total\{method="GET",result="ok"\} 1$`), string(body))
	require.Contains(t, string(body), `damselfly_http_requests_total{code="200",handler="registry",method="GET"}`)
	require.Contains(t, string(body), "go_goroutines")
}

// metric returns the value of one sample in a text exposition, 0 when it
// is absent (a labelled counter never incremented).
func metric(t *testing.T, exposition []byte, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindSubmatch(exposition)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// TestTokenChallengePassthrough: the upstream sits behind an auth proxy
// that answers 401 with a challenge; the client sees that challenge, and
// with the token it gets the image.
func TestTokenChallengePassthrough(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "1", 100)
	require.NoError(t, err)
	const challenge = `Bearer realm="http://127.0.0.1:1/token",service="front",scope="repository:team/app:pull"`
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.Header().Set("WWW-Authenticate", challenge)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required","detail":null}]}`)
			return
		}
		u := *reg.URL
		u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
		req.Header = r.Header.Clone()
		req.Header.Del("Authorization")
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(front.Close)
	base := start(t, "--upstream", front.URL)
	hc := client(t)

	for _, path := range []string{"/v2/", "/v2/team/app/manifests/1", "/v2/team/app/manifests/" + img.Manifest.String()} {
		status, h, body := get(t, hc, base+path, "Accept", acceptAll)
		require.Equal(t, http.StatusUnauthorized, status, path)
		require.Equal(t, challenge, h.Get("WWW-Authenticate"), path)
		var errs struct {
			Errors []struct{ Code, Message string } `json:"errors"`
		}
		require.NoError(t, json.Unmarshal(body, &errs))
		require.Equal(t, "UNAUTHORIZED", errs.Errors[0].Code)
		require.Equal(t, "token required", errs.Errors[0].Message, "the upstream's own error")
	}
	status, _, body := get(t, hc, base+"/v2/team/app/manifests/1", "Accept", acceptAll, "Authorization", "Bearer good")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, img.ManifestBody, body)
	// Cached now, but still not for a client without the token.
	status, _, _ = get(t, hc, base+"/v2/team/app/manifests/1", "Accept", acceptAll)
	require.Equal(t, http.StatusUnauthorized, status)
	status, _, _ = get(t, hc, base+"/v2/team/app/manifests/"+img.Manifest.String(), "Accept", acceptAll)
	require.Equal(t, http.StatusUnauthorized, status)
}

func TestConfigLayering(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "rc.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
listen: "127.0.0.1:7000"
upstream: "https://file.example/"
cache:
  tagTTL: 1m
  maxBytes: 1024
log:
  level: debug
`), 0o600))
	var f flags
	fset := newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse([]string{"--config", file, "--upstream", "http://flag.example:5000", "--log-format", "json"}))
	cfg, err := buildConfig(fset, &f)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7000", cfg.Listen, "from the file")
	require.Equal(t, "http://flag.example:5000", cfg.Upstream, "the flag wins")
	require.Equal(t, time.Minute, cfg.Cache.TagTTL)
	require.Equal(t, bytesize.Size(1024), cfg.Cache.MaxBytes)
	require.Equal(t, 5*time.Minute, cfg.Cache.StaleIfError, "defaulted")
	require.Equal(t, "debug", cfg.Log.Level)
	require.Equal(t, "json", cfg.Log.Format)
}

func TestBadConfiguration(t *testing.T) {
	t.Parallel()
	write := func(s string) string {
		p := filepath.Join(t.TempDir(), "rc.yaml")
		require.NoError(t, os.WriteFile(p, []byte(s), 0o600))
		return p
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"bad upstream scheme", []string{"--upstream", "ftp://x"}, []string{"upstream", "scheme"}},
		{"credentials in upstream", []string{"--upstream", "https://u:hunter2@x"}, []string{"upstream", "user info"}},
		{"bad listen", []string{"--listen", "nowhere"}, []string{"listen"}},
		{"unknown key", []string{"--config", write("cache:\n  tagTTl: 1s\n")}, []string{"tagTTl"}},
		{"every problem at once", []string{"--config", write("cache:\n  tagTTL: -1s\n  maxBytes: -5\nlog:\n  level: loud\n")},
			[]string{"tagTTL", "maxBytes", "loud"}},
		{"missing file", []string{"--config", "/nonexistent/rc.yaml"}, []string{"config"}},
		{"stray argument", []string{"serve"}, []string{"unexpected argument"}},
		{"unknown flag", []string{"--nope"}, []string{"command line"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := Run(t.Context(), tt.args, WithLogger(zap.NewNop()), WithStdout(io.Discard))
			require.Error(t, err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
			require.NotContains(t, err.Error(), "hunter2", "no password in errors")
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, Run(t.Context(), []string{"--version"}, WithStdout(&out)))
	require.True(t, strings.HasPrefix(out.String(), "registry-cache "), out.String())
	out.Reset()
	require.NoError(t, Run(t.Context(), []string{"--help"}, WithStdout(&out)))
	for _, f := range []string{"-listen", "-upstream", "-config", "-log-level", "-log-format", "-version"} {
		require.Contains(t, out.String(), f)
	}
}

// TestDocumentedDefaults keeps the annotated configuration in
// docs/registry-cache.md equal to the built-in defaults.
func TestDocumentedDefaults(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "registry-cache.md"))
	require.NoError(t, err)
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindSubmatch(doc)
	require.NotNil(t, m, "docs/registry-cache.md has a yaml block")
	var cfg Config
	err = command.DecodeYAML(m[1], "docs/registry-cache.md", &cfg)
	require.NoError(t, err)
	require.Equal(t, Config{}.ApplyDefaults(), cfg)
}

func TestParseUpstream(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://registry-1.docker.io":  "https://registry-1.docker.io",
		"http://127.0.0.1:5000/":        "http://127.0.0.1:5000",
		"https://host/prefix/":          "https://host/prefix",
		"https://Host.Example:443/path": "https://Host.Example:443/path",
	} {
		u, err := parseUpstream(in)
		require.NoError(t, err, in)
		require.Equal(t, want, u.String())
	}
	for _, in := range []string{"", "registry.example", "://x", "https://", "http://h?x=1", "http://h#f"} {
		_, err := parseUpstream(in)
		require.Error(t, err, in)
	}
}

// TestUpstreamRedirectChecked: every redirect hop of the upstream is
// checked against the outbound policy. The upstream (allowed on 127.0.0.2)
// redirects a blob to storage on 127.0.0.1 and to the cloud metadata
// address: both refused by default, before any byte is sent there; with
// 127.0.0.1 allowed the redirect to it is followed.
func TestUpstreamRedirectChecked(t *testing.T) {
	t.Parallel()
	blob := []byte("layer bytes behind a redirect")
	var storageHits atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		storageHits.Add(1)
		_, _ = w.Write(blob)
	}))
	t.Cleanup(storage.Close)
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	require.NoError(t, err)
	d := digest.FromBytes(blob)
	upstream := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/team/app/blobs/" + d.String():
			http.Redirect(w, r, storage.URL+"/blob?sig=1", http.StatusTemporaryRedirect)
		case "/v2/team/meta/blobs/" + d.String():
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusTemporaryRedirect)
		default:
			w.WriteHeader(http.StatusOK)
		}
	})}}
	upstream.Start()
	t.Cleanup(upstream.Close)
	hc := client(t)

	base := startPolicy(t, "--upstream", upstream.URL, "--source-allow", "127.0.0.2/32")
	for _, repo := range []string{"team/app", "team/meta"} {
		status, _, body := get(t, hc, base+"/v2/"+repo+"/blobs/"+d.String())
		require.GreaterOrEqual(t, status, 500, "%s: %s", repo, body)
		require.NotContains(t, string(body), string(blob))
	}
	require.Zero(t, storageHits.Load(), "nothing reached the loopback storage")

	base = startPolicy(t, "--upstream", upstream.URL, "--source-allow", "127.0.0.2/32,127.0.0.1/32")
	status, _, body := get(t, hc, base+"/v2/team/app/blobs/"+d.String())
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.Equal(t, blob, body)
	status, _, _ = get(t, hc, base+"/v2/team/meta/blobs/"+d.String())
	require.GreaterOrEqual(t, status, 500, "link-local stays denied")
}

// TestSourcePolicyInConfig: source.allow in the file and --source-allow add
// up; a malformed entry is reported with its key.
func TestSourcePolicyInConfig(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "rc.yaml")
	require.NoError(t, os.WriteFile(file, []byte("source:\n  allow: [10.0.0.0/8]\n  deny: [192.168.0.0/16]\n"), 0o600))
	var f flags
	fset := newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse([]string{"--config", file, "--source-allow", "127.0.0.1/32"}))
	cfg, err := buildConfig(fset, &f)
	require.NoError(t, err)
	require.Equal(t, []string{"10.0.0.0/8", "127.0.0.1/32"}, cfg.Source.Allow)
	require.Equal(t, []string{"192.168.0.0/16"}, cfg.Source.Deny)

	require.NoError(t, os.WriteFile(file, []byte("source:\n  allow: [\"not a cidr/99\"]\n"), 0o600))
	err = Run(t.Context(), []string{"--config", file}, WithLogger(zap.NewNop()), WithStdout(io.Discard))
	require.ErrorContains(t, err, "source.allow")
}
