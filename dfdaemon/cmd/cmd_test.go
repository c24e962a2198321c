package cmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// The embedded registry leaves its event broadcaster running. Its Close
// also gives up after a 5s Shutdown without closing connections that were
// dialled but never used (the supernode's source client dials such spares
// when fetches race), so a pair of idle HTTP connection goroutines may
// outlive it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
	)
}

func TestDocsConfigIsDefault(t *testing.T) {
	t.Parallel()
	var cfg Config
	err := command.LoadYAML(filepath.Join("..", "..", "docs", "dfdaemon.yaml"), &cfg)
	require.NoError(t, err)
	require.NoError(t, cfg.ApplyDefaults().Validate())
	require.Equal(t, Config{}.ApplyDefaults(), cfg.ApplyDefaults(), "the documented config is the default")
	require.Equal(t, bytesize.Size(20<<30), cfg.Cache.Quota, "sizes read with units")
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dfdaemon.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestBadConfigFailsBeforeListening(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"bad listen", []string{"--listen", "nowhere"}, []string{"listen", "host:port"}},
		{"bad peer listen", []string{"--peer-listen", "127.0.0.1:70000"}, []string{"peerListen", "port"}},
		{"bad node", []string{"--node", "127.0.0.1:8002,nohost"}, []string{"nodes[1]"}},
		{"bad registry", []string{"--registry", "ftp://example.com"}, []string{"mirror.registry"}},
		{"registry with path", []string{"--registry", "https://example.com/v2/"}, []string{"mirror.registry"}},
		{"bad advertise ip", []string{"--advertise-ip", "0.0.0.0"}, []string{"advertiseIP"}},
		{"bad size", []string{"--config", writeFile(t, "cache:\n  quota: 0.5x\n")}, []string{"line 2", `"0.5x"`}},
		{"nested problems", []string{"--config", writeFile(t, "cache:\n  lowWater: 3\npeer:\n  concurrency: -1\nmirror:\n  upstreams:\n    - host: 'a b'\nmanifestCache:\n  tagTTL: -1s\n"),
			"--log-level", "loud"},
			[]string{"cache.lowWater", "peer.concurrency -1", "mirror.upstreams[0].host", "manifestCache.tagTTL -1s", "log.level"}},
		{"bad proxy rule", []string{"--config", writeFile(t, "proxy:\n  rules:\n    - regex: '('\n      useP2P: true\n")}, []string{"rules[0]"}},
		{"hijack without CA", []string{"--config", writeFile(t, "proxy:\n  hijack:\n    hosts: ['^x$']\n")}, []string{"caCert"}},
		{"unknown key", []string{"--config", writeFile(t, "listne: :1\n")}, []string{"listne"}},
		{"bad download rate flag", []string{"--download-rate", "fast"}, []string{"download-rate", `"fast"`}},
		{"negative upload rate flag", []string{"--upload-rate", "-1M"}, []string{"upload-rate", `"-1M"`}},
		{"bad rate in file", []string{"--config", writeFile(t, "rateLimit:\n  download: 16M\n  upload: 5Q\n")}, []string{"line 3", `"5Q"`}},
		{"unknown rate key", []string{"--config", writeFile(t, "rateLimit:\n  downlaod: 16M\n")}, []string{"downlaod"}},
		{"every file problem at once", []string{"--config", writeFile(t, "rateLimit:\n  downlaod: 16M\n  upload: 5Q\nmanifestCache:\n  tagTTL: soon\n")},
			[]string{"rateLimit.downlaod (line 2): unknown key (did you mean download?)", `rateLimit.upload (line 3): rate "5Q"`, `manifestCache.tagTTL (line 5): "soon" is not a duration`}},
		{"missing config file", []string{"--config", "/nonexistent/dfdaemon.yaml"}, []string{"config"}},
		{"unknown flag", []string{"--colour"}, []string{"colour"}},
		{"stray argument", []string{"serve"}, []string{"serve"}},
		{"no cluster token", []string{"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"}, []string{"no cluster token", "DAMSELFLY_CLUSTER_TOKEN", "--cluster-token-file"}},
		{"missing token file", []string{"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--cluster-token-file", "/nonexistent/token"}, []string{"cluster token file", "/nonexistent/token"}},
		{"three tokens", []string{"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--config", writeFile(t, "clusterToken: a-token-0123456789,b-token-0123456789,c-token-0123456789\n")}, []string{"clusterToken", "at most 2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			readyCalled := false
			args := append([]string{"--data-dir", t.TempDir()}, tt.args...)
			err := Run(t.Context(), args, WithStdout(&out), WithStderr(io.Discard), withEnv(noEnv),
				WithReady(func(net.Addr, net.Addr) { readyCalled = true }))
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
	require.True(t, strings.HasPrefix(out.String(), "dfdaemon "), out.String())

	out.Reset()
	require.NoError(t, Run(t.Context(), []string{"--help"}, WithStdout(&out)))
	for _, f := range []string{"config", "listen", "peer-listen", "advertise-ip", "node", "registry", "data-dir", "log-level", "log-format", "download-rate", "upload-rate", "version"} {
		require.Contains(t, out.String(), "-"+f)
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	t.Parallel()
	p := writeFile(t, `
listen: 127.0.0.1:7001
peerListen: 127.0.0.1:7002
nodes: [sn1:8002, sn2:8002]
dataDir: /from/file
mirror:
  registry: http://127.0.0.1:5000
  upstreams:
    - host: docker.io
    - host: 127.0.0.1:5001
      insecure: true
cache:
  quota: 512MiB
proxy:
  rules: []
log:
  level: warn
rateLimit:
  download: 16MiB/s
  upload: 1048576
`)
	var f flags
	fset := newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse([]string{"--config", p, "--node", "a:1, b:2", "--data-dir", "/from/flag", "--registry", "https://r.example", "--upload-rate", "2.5M"}))
	cfg, err := buildConfig(fset, &f)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7001", cfg.Listen)
	require.Equal(t, "127.0.0.1:7002", cfg.PeerListen)
	require.Equal(t, []string{"a:1", "b:2"}, cfg.Supernodes, "flag wins")
	require.Equal(t, "/from/flag", cfg.DataDir)
	require.Equal(t, "https://r.example", cfg.Mirror.Registry)
	require.Len(t, cfg.Mirror.Upstreams, 2)
	require.Equal(t, bytesize.Size(512<<20), cfg.Cache.Quota)
	require.Empty(t, cfg.Proxy.Rules, "an explicit empty list means no rules")
	require.NotNil(t, cfg.Proxy.Rules)
	require.Equal(t, "warn", cfg.Log.Level)
	require.Equal(t, "console", cfg.Log.Format, "defaults fill the rest")
	require.Equal(t, 30*time.Second, cfg.Mirror.AuthTTL)
	require.Equal(t, ratelimit.Rate(16<<20), cfg.RateLimit.Download, "rate from the file")
	require.Equal(t, ratelimit.Rate(5<<19), cfg.RateLimit.Upload, "flag wins")

	// Without a file: the defaults, including the P2P rule for blobs.
	f = flags{}
	fset = newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse(nil))
	cfg, err = buildConfig(fset, &f)
	require.NoError(t, err)
	require.Equal(t, DefaultProxyRules(), cfg.Proxy.Rules)
	require.Equal(t, []string{DefaultSupernode}, cfg.Supernodes)
	require.Zero(t, cfg.RateLimit.Download, "unlimited by default")
	require.Zero(t, cfg.RateLimit.Upload)

	// A flag of 0 lifts the file's limit.
	f = flags{}
	fset = newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse([]string{"--config", p, "--download-rate", "0"}))
	cfg, err = buildConfig(fset, &f)
	require.NoError(t, err)
	require.Zero(t, cfg.RateLimit.Download)
	require.Equal(t, ratelimit.Rate(1<<20), cfg.RateLimit.Upload)
}

func TestRateLimitValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, RateLimitConfig{}.Validate())
	require.NoError(t, RateLimitConfig{Download: 1, Upload: 1 << 30}.Validate())
	err := RateLimitConfig{Download: -1, Upload: -2}.Validate()
	require.ErrorContains(t, err, "rateLimit.download")
	require.ErrorContains(t, err, "rateLimit.upload")
	err = Config{RateLimit: RateLimitConfig{Upload: -1}}.ApplyDefaults().Validate()
	require.ErrorContains(t, err, "rateLimit.upload")
}

// TestRateLimitsApplied pulls a blob through a dfdaemon limited to 1 MiB/s
// down and up, then fetches it from the node's upload server: neither can
// beat its limit (the limiter's burst is a tenth of a second's worth),
// where unlimited both take milliseconds on loopback.
func TestRateLimitsApplied(t *testing.T) {
	t.Parallel()
	const size, limit = 1_200_000, 1 << 20
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", size)
	require.NoError(t, err)
	layer := img.Layers[0]
	sn := startSupernode(t)
	d := startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--advertise-ip", "127.0.0.1",
		"--source-allow", "127.0.0.1/32", "--download-rate", "1M", "--upload-rate", "1MiB/s")
	// The fewest seconds limit allows for the layer: all but one burst.
	least := time.Duration(float64(layer.Size-limit/10) / limit * float64(time.Second))

	start := time.Now()
	resp, body := get(t, plainClient, "http://"+d.addr+"/v2/team/app/blobs/"+layer.Digest.String(), nil)
	took := time.Since(start)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, layer.Digest, digest.FromBytes(body))
	require.GreaterOrEqual(t, took, least, "download paced at 1 MiB/s")

	start = time.Now()
	resp, body = get(t, plainClient, "http://"+d.peerAddr+"/upload/v1/tasks/"+layer.Digest.String(),
		http.Header{"Range": {fmt.Sprintf("bytes=0-%d", layer.Size-1)}, "Authorization": {"Bearer " + supernodetest.ClusterToken}})
	took = time.Since(start)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, layer.Digest, digest.FromBytes(body))
	require.GreaterOrEqual(t, took, least, "upload paced at 1 MiB/s")
}

// startSupernode runs a real supernode in-process on 127.0.0.1.
func startSupernode(t *testing.T) string {
	t.Helper()
	return supernodetest.Start(t, "cmd-test").Addr
}

type daemon struct {
	addr, peerAddr string
	stop           func() error
}

func noEnv(string) (string, bool) { return "", false }

// clusterTokenFile writes supernodetest's cluster token for a dfdaemon to
// present and returns its path.
func clusterTokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster-token")
	require.NoError(t, os.WriteFile(p, []byte(supernodetest.ClusterToken+"\n"), 0o600))
	return p
}

// startDaemon runs dfdaemon in-process; stop cancels it and returns Run's
// error once it has returned.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	type addrs struct{ m, p net.Addr }
	ready := make(chan addrs, 1)
	done := make(chan error, 1)
	args = append([]string{
		"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(t.TempDir(), "dfdaemon"), "--log-level", "error",
		// The supernode's CDN and the other peers live on loopback.
		"--peer-allow", "127.0.0.1/32",
		"--cluster-token-file", clusterTokenFile(t),
	}, args...)
	go func() {
		done <- Run(ctx, args, WithStderr(io.Discard), withEnv(noEnv), WithReady(func(m, p net.Addr) { ready <- addrs{m, p} }))
	}()
	var result error
	stopped := false
	stop := func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(30 * time.Second):
			result = context.DeadlineExceeded
		}
		return result
	}
	t.Cleanup(func() { require.NoError(t, stop()) })
	select {
	case a := <-ready:
		return &daemon{addr: a.m.String(), peerAddr: a.p.String(), stop: stop}
	case err := <-done:
		t.Fatalf("dfdaemon: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("dfdaemon did not start")
	}
	return nil
}

var plainClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

func get(t *testing.T, c *http.Client, u string, h http.Header) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	require.NoError(t, err)
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

func TestRunMirrorProxyHealthMetrics(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 1_500_000, 20_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	cfg := writeFile(t, "proxy:\n  outbound:\n    allow: [127.0.0.1/32]\n  rules:\n    - regex: '/v2/.+/blobs/sha256:'\n      useP2P: true\n")
	d := startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--config", cfg, "--source-allow", "127.0.0.1/32")
	reg.ResetStats()

	// The mirror.
	resp, body := get(t, plainClient, "http://"+d.addr+"/v2/team/app/manifests/v1", http.Header{"Accept": {registrytest.MediaTypeManifest}})
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Equal(t, img.ManifestBody, body)
	layer := img.Layers[0].Digest
	resp, body = get(t, plainClient, "http://"+d.addr+"/v2/team/app/blobs/"+layer.String(), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, layer, digest.FromBytes(body))

	// The forward proxy on the same listener: a blob URL goes P2P (from
	// this node's cache now), anything else is forwarded.
	proxyURL, err := url.Parse("http://" + d.addr)
	require.NoError(t, err)
	viaProxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}}
	resp, body = get(t, viaProxy, reg.URL.String()+"/v2/team/app/blobs/"+layer.String(), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "p2p", resp.Header.Get(proxy.RouteHeader))
	require.Equal(t, layer, digest.FromBytes(body))
	cfgBlob := img.Config.Digest
	resp, body = get(t, viaProxy, reg.URL.String()+"/v2/team/app/blobs/"+cfgBlob.String(), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, cfgBlob, digest.FromBytes(body))
	resp, body = get(t, viaProxy, reg.URL.String()+"/v2/team/app/tags/list", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Empty(t, resp.Header.Get(proxy.RouteHeader), "forwarded, not P2P")
	require.Contains(t, string(body), "v1")

	// Many clients asking for the tag at once: one upstream resolution.
	errs := make(chan error, 10)
	for range cap(errs) {
		go func() {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+d.addr+"/v2/team/app/manifests/v1", nil)
			req.Header.Set("Accept", registrytest.MediaTypeManifest)
			resp, err := plainClient.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !bytes.Equal(b, img.ManifestBody) {
					err = io.ErrUnexpectedEOF
				}
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		require.NoError(t, <-errs)
	}

	s := reg.Stats()
	require.Equal(t, 1, s.ManifestGETs["team/app:v1"], "the tag reached the registry once per TTL")
	require.Equal(t, 1, s.BlobGETs[layer], "the proxy's fetch of the layer came from the cache")
	require.Equal(t, 1, s.BlobGETs[cfgBlob])

	resp, body = get(t, plainClient, "http://"+d.addr+"/healthz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "ok\n", string(body))
	resp, body = get(t, plainClient, "http://"+d.addr+"/metrics", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, m := range []string{
		"damselfly_mirror_blob_auth_checks_total", "damselfly_dfdaemon_cache_usage_bytes",
		"damselfly_peer_downloads_total", `damselfly_http_requests_total{code="200",handler="mirror"`,
		"damselfly_registry_cache_",
	} {
		require.Contains(t, string(body), m)
	}
	resp, _ = get(t, plainClient, "http://"+d.addr+"/nothing", nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// Other members can fetch the node's pieces; nobody else can, knowing
	// the digest is not enough.
	resp, _ = get(t, plainClient, "http://"+d.peerAddr+"/upload/v1/tasks/"+layer.String(),
		http.Header{"Range": {"bytes=0-9"}, "Authorization": {"Bearer " + supernodetest.ClusterToken}})
	require.Equal(t, http.StatusPartialContent, resp.StatusCode, "the node seeds what it pulled")
	resp, body = get(t, plainClient, "http://"+d.peerAddr+"/upload/v1/tasks/"+layer.String(), http.Header{"Range": {"bytes=0-9"}})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "an outsider gets nothing")
	require.Contains(t, string(body), "cluster token")

	start := time.Now()
	require.NoError(t, d.stop())
	require.Less(t, time.Since(start), 20*time.Second, "bounded shutdown")
}

func TestProxyPrivateBlobNeedsOwnCredentials(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "s3cret"}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "v1", 300_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	cfg := writeFile(t, "proxy:\n  outbound:\n    allow: [127.0.0.1/32]\n")
	d := startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--config", cfg, "--source-allow", "127.0.0.1/32")
	tok, err := reg.Token(t.Context(), "alice", "s3cret", "repository:private/app:pull")
	require.NoError(t, err)

	proxyURL, err := url.Parse("http://" + d.addr)
	require.NoError(t, err)
	viaProxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}}
	blobURL := reg.URL.String() + "/v2/private/app/blobs/" + img.Layers[0].Digest.String()

	resp, body := get(t, viaProxy, blobURL, http.Header{"Authorization": {"Bearer " + tok}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "p2p", resp.Header.Get(proxy.RouteHeader))
	require.Equal(t, img.Layers[0].Digest, digest.FromBytes(body))

	// Cached on the node now; a client without credentials still gets the
	// registry's own refusal.
	resp, body = get(t, viaProxy, blobURL, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.NotEqual(t, img.Layers[0].Digest, digest.FromBytes(body))
	require.Contains(t, resp.Header.Get("WWW-Authenticate"), reg.Realm())
}

func TestManyDaemonsInOneProcess(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 2_000_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	var ds []*daemon
	for range 3 {
		ds = append(ds, startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--advertise-ip", "127.0.0.1", "--source-allow", "127.0.0.1/32"))
	}
	reg.ResetStats()
	for _, d := range ds {
		resp, body := get(t, plainClient, "http://"+d.addr+"/v2/team/app/blobs/"+img.Layers[0].Digest.String(), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, img.Layers[0].Digest, digest.FromBytes(body))
	}
	require.Equal(t, 1, reg.Stats().BlobGETs[img.Layers[0].Digest], "later daemons got the layer from peers")
}

func TestProxyP2PRespectsOutboundPolicy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 10_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	// No outbound allow: the registry on loopback is out of the proxy's reach.
	d := startDaemon(t, "--node", sn, "--registry", reg.URL.String())
	reg.ResetStats()
	proxyURL, err := url.Parse("http://" + d.addr)
	require.NoError(t, err)
	viaProxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}}
	resp, body := get(t, viaProxy, reg.URL.String()+"/v2/team/app/blobs/"+img.Layers[0].Digest.String(), nil)
	require.NotEqual(t, http.StatusOK, resp.StatusCode)
	require.NotEqual(t, img.Layers[0].Digest, digest.FromBytes(body))
	require.Zero(t, reg.Stats().Requests, "nothing reached the registry")
}
