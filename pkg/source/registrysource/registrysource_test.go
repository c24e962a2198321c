package registrysource_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

func TestMain(m *testing.M) {
	// The embedded registry's notification broadcaster has no way to stop.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

const (
	user = "alice"
	pass = "s3cret-password"
)

// recorder is an http.RoundTripper that remembers what was sent where.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
	next http.RoundTripper
}

type recorded struct {
	method, host, path string
	auth               string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, recorded{method: req.Method, host: req.URL.Host, path: req.URL.Path, auth: req.Header.Get("Authorization")})
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func (r *recorder) to(path string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, q := range r.reqs {
		if q.path == path {
			out = append(out, q)
		}
	}
	return out
}

func newRecorder(t *testing.T) (*recorder, *http.Client) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	rec := &recorder{next: tr}
	return rec, &http.Client{Transport: rec}
}

func newClient(t *testing.T, opts ...registrysource.Option) *registrysource.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return registrysource.New(append([]registrysource.Option{registrysource.WithHTTPClient(&http.Client{Transport: tr})}, opts...)...)
}

func TestURLs(t *testing.T) {
	t.Parallel()
	base := &url.URL{Scheme: "http", Host: "127.0.0.1:5000"}
	d := digest.FromString("x")
	tests := []struct {
		name string
		got  func() (string, error)
		want string
		err  error
	}{
		{"manifest by tag", func() (string, error) { return registrysource.ManifestURL(base, "library/app", "v1.2") }, "http://127.0.0.1:5000/v2/library/app/manifests/v1.2", nil},
		{"manifest by digest", func() (string, error) { return registrysource.ManifestURL(base, "a/b/c", d.String()) }, "http://127.0.0.1:5000/v2/a/b/c/manifests/" + d.String(), nil},
		{"blob", func() (string, error) { return registrysource.BlobURL(base, "app", d) }, "http://127.0.0.1:5000/v2/app/blobs/" + d.String(), nil},
		{"tags", func() (string, error) { return registrysource.TagsURL(base, "my-org/app_x") }, "http://127.0.0.1:5000/v2/my-org/app_x/tags/list", nil},
		{"trailing slash base", func() (string, error) {
			return registrysource.TagsURL(&url.URL{Scheme: "https", Host: "r.example", Path: "/"}, "app")
		}, "https://r.example/v2/app/tags/list", nil},
		{"upper case repo", func() (string, error) { return registrysource.ManifestURL(base, "Library/app", "1") }, "", registrysource.ErrInvalid},
		{"dot dot", func() (string, error) { return registrysource.ManifestURL(base, "library/../app", "1") }, "", registrysource.ErrInvalid},
		{"empty component", func() (string, error) { return registrysource.ManifestURL(base, "library//app", "1") }, "", registrysource.ErrInvalid},
		{"host in repo", func() (string, error) { return registrysource.ManifestURL(base, "evil.com:80/app", "1") }, "", registrysource.ErrInvalid},
		{"empty repo", func() (string, error) { return registrysource.TagsURL(base, "") }, "", registrysource.ErrInvalid},
		{"long repo", func() (string, error) { return registrysource.TagsURL(base, strings.Repeat("a", 256)) }, "", registrysource.ErrInvalid},
		{"query in repo", func() (string, error) { return registrysource.TagsURL(base, "app?x=1") }, "", registrysource.ErrInvalid},
		{"bad tag", func() (string, error) { return registrysource.ManifestURL(base, "app", "-x") }, "", registrysource.ErrInvalid},
		{"tag with slash", func() (string, error) { return registrysource.ManifestURL(base, "app", "a/../../x") }, "", registrysource.ErrInvalid},
		{"long tag", func() (string, error) { return registrysource.ManifestURL(base, "app", strings.Repeat("t", 129)) }, "", registrysource.ErrInvalid},
		{"short digest", func() (string, error) { return registrysource.ManifestURL(base, "app", "sha256:abc") }, "", registrysource.ErrInvalid},
		{"sha512 digest", func() (string, error) {
			return registrysource.ManifestURL(base, "app", digest.SHA512.FromString("x").String())
		}, "", registrysource.ErrInvalid},
		{"blob bad digest", func() (string, error) { return registrysource.BlobURL(base, "app", "sha256:../../x") }, "", registrysource.ErrInvalid},
		{"base with path", func() (string, error) {
			return registrysource.TagsURL(&url.URL{Scheme: "http", Host: "h", Path: "/x"}, "app")
		}, "", registrysource.ErrInvalid},
		{"base scheme", func() (string, error) { return registrysource.TagsURL(&url.URL{Scheme: "file", Host: "h"}, "app") }, "", registrysource.ErrInvalid},
		{"nil base", func() (string, error) { return registrysource.TagsURL(nil, "app") }, "", registrysource.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := tt.got()
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseImage(t *testing.T) {
	t.Parallel()
	c := registrysource.New(registrysource.WithInsecureRegistries([]string{"127.0.0.1:5000", "localhost"}))
	d := digest.FromString("m")
	tests := []struct {
		in                     string
		scheme, host, repo, rf string
		err                    bool
	}{
		{in: "alpine", scheme: "https", host: "registry-1.docker.io", repo: "library/alpine", rf: "latest"},
		{in: "docker.io/org/app:1", scheme: "https", host: "registry-1.docker.io", repo: "org/app", rf: "1"},
		{in: "127.0.0.1:5000/library/app:1", scheme: "http", host: "127.0.0.1:5000", repo: "library/app", rf: "1"},
		{in: "127.0.0.1:5001/library/app:1", scheme: "https", host: "127.0.0.1:5001", repo: "library/app", rf: "1"},
		{in: "localhost:7000/app", scheme: "http", host: "localhost:7000", repo: "app", rf: "latest"},
		{in: "ghcr.io/o/app:1@" + d.String(), scheme: "https", host: "ghcr.io", repo: "o/app", rf: d.String()},
		{in: "http://127.0.0.1:5000/app:1", err: true},
		{in: "app/UPPER", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			ir, err := c.ParseImage(tt.in)
			if tt.err {
				require.ErrorIs(t, err, registrysource.ErrInvalid)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.scheme, ir.Base.Scheme)
			require.Equal(t, tt.host, ir.Base.Host)
			require.Equal(t, tt.repo, ir.Repo)
			require.Equal(t, tt.rf, ir.Ref)
		})
	}
}

func TestParsePlatform(t *testing.T) {
	t.Parallel()
	p, err := registrysource.ParsePlatform("linux/arm64/v8")
	require.NoError(t, err)
	require.Equal(t, ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, p)
	p, err = registrysource.ParsePlatform("Linux/AMD64")
	require.NoError(t, err)
	require.Equal(t, ocispec.Platform{OS: "linux", Architecture: "amd64"}, p)
	for _, bad := range []string{"", "linux", "linux/", "a/b/c/d", "/amd64", "linux/amd 64"} {
		_, err := registrysource.ParsePlatform(bad)
		require.ErrorIs(t, err, registrysource.ErrInvalid, bad)
	}
}

func TestManifestsAndBlobs(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 2000, 3000)
	require.NoError(t, err)
	c := newClient(t)

	t.Run("get by tag", func(t *testing.T) {
		m, err := c.GetManifest(t.Context(), reg.URL, "library/app", "1", nil, nil)
		require.NoError(t, err)
		require.Equal(t, img.Manifest, m.Digest)
		require.Equal(t, img.ManifestBody, m.Body)
		require.Equal(t, registrysource.MediaTypeDockerManifest, m.MediaType)
		require.Equal(t, ocispec.Descriptor{MediaType: m.MediaType, Digest: img.Manifest, Size: int64(len(img.ManifestBody))}, m.Descriptor())
	})
	t.Run("get by digest", func(t *testing.T) {
		m, err := c.GetManifest(t.Context(), reg.URL, "library/app", img.Manifest.String(), []string{registrysource.MediaTypeDockerManifest}, nil)
		require.NoError(t, err)
		require.Equal(t, img.ManifestBody, m.Body)
	})
	t.Run("head manifest", func(t *testing.T) {
		for _, ref := range []string{"1", img.Manifest.String()} {
			desc, err := c.HeadManifest(t.Context(), reg.URL, "library/app", ref, nil, nil)
			require.NoError(t, err)
			require.Equal(t, img.Manifest, desc.Digest)
			require.Equal(t, int64(len(img.ManifestBody)), desc.Size)
			require.Equal(t, registrysource.MediaTypeDockerManifest, desc.MediaType)
		}
	})
	t.Run("head blob", func(t *testing.T) {
		for _, l := range img.Blobs() {
			desc, err := c.HeadBlob(t.Context(), reg.URL, "library/app", l.Digest, nil)
			require.NoError(t, err)
			require.Equal(t, l.Digest, desc.Digest)
			require.Equal(t, l.Size, desc.Size)
		}
	})
	t.Run("unknown tag", func(t *testing.T) {
		_, err := c.GetManifest(t.Context(), reg.URL, "library/app", "nope", nil, nil)
		require.ErrorIs(t, err, source.ErrNotFound)
		var re *registrysource.ResponseError
		require.ErrorAs(t, err, &re)
		require.Equal(t, http.StatusNotFound, re.StatusCode)
		require.Len(t, re.Errors(), 1)
		require.Equal(t, errcode.ErrorCodeManifestUnknown, re.Errors()[0].(errcode.Error).Code)
		require.Contains(t, re.Header.Get("Content-Type"), "application/json")
	})
	t.Run("unknown blob", func(t *testing.T) {
		_, err := c.HeadBlob(t.Context(), reg.URL, "library/app", digest.FromString("absent"), nil)
		require.ErrorIs(t, err, source.ErrNotFound)
		_, err = c.HeadManifest(t.Context(), reg.URL, "library/other", "1", nil, nil)
		require.ErrorIs(t, err, source.ErrNotFound)
	})
	t.Run("too large", func(t *testing.T) {
		small := newClient(t, registrysource.WithMaxManifestSize(int64(len(img.ManifestBody)-1)))
		_, err := small.GetManifest(t.Context(), reg.URL, "library/app", "1", nil, nil)
		require.ErrorIs(t, err, registrysource.ErrTooLarge)
	})
	t.Run("invalid before any request", func(t *testing.T) {
		before := reg.Stats().Requests
		_, err := c.GetManifest(t.Context(), reg.URL, "library/App", "1", nil, nil)
		require.ErrorIs(t, err, registrysource.ErrInvalid)
		_, err = c.HeadBlob(t.Context(), reg.URL, "library/app", "sha256:zz", nil)
		require.ErrorIs(t, err, registrysource.ErrInvalid)
		require.Equal(t, before, reg.Stats().Requests)
	})
}

// tamper puts a reverse proxy in front of the registry that lets edit change
// manifest responses.
func tamper(t *testing.T, target *url.URL, edit func(resp *http.Response) error) *url.URL {
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(resp.Request.URL.Path, "/manifests/") {
			return edit(resp)
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u
}

func TestManifestVerification(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "app", "1", 100)
	require.NoError(t, err)
	other := digest.FromString("another manifest")
	c := newClient(t)

	t.Run("lying Docker-Content-Digest", func(t *testing.T) {
		base := tamper(t, reg.URL, func(resp *http.Response) error {
			resp.Header.Set("Docker-Content-Digest", other.String())
			return nil
		})
		m, err := c.GetManifest(t.Context(), base, "app", "1", nil, nil)
		require.ErrorIs(t, err, registrysource.ErrDigestMismatch)
		require.Nil(t, m)
		_, err = c.HeadManifest(t.Context(), base, "app", img.Manifest.String(), nil, nil)
		require.ErrorIs(t, err, registrysource.ErrDigestMismatch)
	})
	t.Run("garbage Docker-Content-Digest", func(t *testing.T) {
		base := tamper(t, reg.URL, func(resp *http.Response) error {
			resp.Header.Set("Docker-Content-Digest", "sha256:nothex")
			return nil
		})
		_, err := c.GetManifest(t.Context(), base, "app", "1", nil, nil)
		require.ErrorIs(t, err, registrysource.ErrDigestMismatch)
	})
	t.Run("body altered", func(t *testing.T) {
		base := tamper(t, reg.URL, func(resp *http.Response) error {
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			body = bytes.Replace(body, []byte(`"schemaVersion":2`), []byte(`"schemaVersion": 2`), 1)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Del("Content-Length")
			resp.Header.Del("Docker-Content-Digest")
			return nil
		})
		_, err := c.GetManifest(t.Context(), base, "app", img.Manifest.String(), nil, nil)
		require.ErrorIs(t, err, registrysource.ErrDigestMismatch)
		// By tag the body is what it is: its own digest.
		m, err := c.GetManifest(t.Context(), base, "app", "1", nil, nil)
		require.NoError(t, err)
		require.NotEqual(t, img.Manifest, m.Digest)
		require.Equal(t, digest.FromBytes(m.Body), m.Digest)
	})
	t.Run("no digest header on HEAD falls back to GET", func(t *testing.T) {
		base := tamper(t, reg.URL, func(resp *http.Response) error {
			resp.Header.Del("Docker-Content-Digest")
			return nil
		})
		desc, err := c.HeadManifest(t.Context(), base, "app", "1", nil, nil)
		require.NoError(t, err)
		require.Equal(t, img.Manifest, desc.Digest)
	})
}

func TestPassThroughAuth(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "1", 500)
	require.NoError(t, err)
	rec, hc := newRecorder(t)
	c := registrysource.New(registrysource.WithHTTPClient(hc))

	// Without credentials: the registry's challenge comes back to pass on,
	// and no token was asked for on the caller's behalf.
	_, err = c.GetManifest(t.Context(), reg.URL, "private/app", "1", nil, nil)
	var re *registrysource.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)
	require.Contains(t, re.Header.Get("WWW-Authenticate"), `Bearer realm="`+reg.Realm()+`"`)
	require.Contains(t, re.Header.Get("WWW-Authenticate"), `scope="repository:private/app:pull"`)
	require.Empty(t, rec.to("/token"))
	_, err = c.HeadBlob(t.Context(), reg.URL, "private/app", img.Layers[0].Digest, nil)
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)

	// The client's own token goes through as it is.
	tok, err := reg.Token(t.Context(), user, pass, "repository:private/app:pull")
	require.NoError(t, err)
	h := http.Header{"Authorization": {"Bearer " + tok}, "Connection": {"close"}, "Range": {"bytes=0-1"}}
	m, err := c.GetManifest(t.Context(), reg.URL, "private/app", "1", nil, h)
	require.NoError(t, err)
	require.Equal(t, img.Manifest, m.Digest)
	desc, err := c.HeadBlob(t.Context(), reg.URL, "private/app", img.Layers[0].Digest, h)
	require.NoError(t, err)
	require.Equal(t, img.Layers[0].Size, desc.Size)
	require.Empty(t, rec.to("/token"))

	// A token for another repository does not open this one.
	other, err := reg.Token(t.Context(), user, pass, "repository:other/app:pull")
	require.NoError(t, err)
	_, err = c.HeadBlob(t.Context(), reg.URL, "private/app", img.Layers[0].Digest, http.Header{"Authorization": {"Bearer " + other}})
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)
}

func TestResolveWithCredentials(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "1", 500, 700, 900)
	require.NoError(t, err)
	core, logs := observer.New(zapcore.DebugLevel)
	rec, hc := newRecorder(t)
	c := registrysource.New(registrysource.WithHTTPClient(hc), registrysource.WithLogger(zap.New(core)),
		registrysource.WithInsecureRegistries([]string{reg.Host}))
	ref := reg.Host + "/private/app:1"

	got, err := c.Resolve(t.Context(), ref, nil, registrysource.Credentials{Username: user, Password: pass})
	require.NoError(t, err)
	require.Equal(t, img.Manifest, got.Manifest)
	require.Equal(t, img.Config, got.Config)
	require.Equal(t, img.Layers, got.Layers)
	require.Equal(t, "private/app", got.Repo)
	require.Equal(t, reg.URL.String(), got.Base.String())
	require.Empty(t, got.Index)

	toks := rec.to("/token")
	require.Len(t, toks, 1)
	require.True(t, strings.HasPrefix(toks[0].auth, "Basic "), "credentials go to a realm on the registry's host")

	// The header Auth gives opens the blobs, with the cached token.
	h, err := got.Auth.Header(t.Context())
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(h.Get("Authorization"), "Bearer "))
	for _, b := range img.Blobs() {
		_, err := c.HeadBlob(t.Context(), reg.URL, "private/app", b.Digest, h)
		require.NoError(t, err)
	}
	// A second resolve reuses the token.
	_, err = c.Resolve(t.Context(), ref, nil, registrysource.Credentials{Username: user, Password: pass})
	require.NoError(t, err)
	require.Len(t, rec.to("/token"), 1)

	// A token given as is.
	tok, err := reg.Token(t.Context(), user, pass, "repository:private/app:pull")
	require.NoError(t, err)
	got, err = c.Resolve(t.Context(), ref, nil, registrysource.Credentials{Token: tok})
	require.NoError(t, err)
	require.Equal(t, img.Manifest, got.Manifest)
	require.Len(t, rec.to("/token"), 1)

	// Wrong password: the token server's refusal.
	_, err = c.Resolve(t.Context(), ref, nil, registrysource.Credentials{Username: user, Password: "wrong"})
	var re *registrysource.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)
	require.NotContains(t, err.Error(), "wrong")

	// Anonymous: a token without access, then the registry's 401.
	_, err = c.Resolve(t.Context(), ref, nil, registrysource.Credentials{})
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)

	for _, e := range logs.All() {
		line := e.Message
		for _, f := range e.Context {
			line += " " + f.String
		}
		require.NotContains(t, line, pass)
		require.NotContains(t, line, tok)
	}
}

func TestRealmOnAnotherHostGetsNoCredentials(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	_, err := reg.PushRandomImage(t.Context(), "private/app", "1", 100)
	require.NoError(t, err)
	// The realm is on 127.0.0.1; reach the registry as localhost.
	host := strings.Replace(reg.Host, "127.0.0.1", "localhost", 1)
	core, logs := observer.New(zapcore.DebugLevel)
	rec, hc := newRecorder(t)
	c := registrysource.New(registrysource.WithHTTPClient(hc), registrysource.WithLogger(zap.New(core)),
		registrysource.WithInsecureRegistries([]string{"localhost"}))

	_, err = c.Resolve(t.Context(), host+"/private/app:1", nil, registrysource.Credentials{Username: user, Password: pass})
	var re *registrysource.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode, "an anonymous token has no access")
	toks := rec.to("/token")
	require.NotEmpty(t, toks)
	for _, r := range toks {
		require.Empty(t, r.auth, "no credentials to a realm on another host")
	}
	warn := logs.FilterMessageSnippet("another host").All()
	require.NotEmpty(t, warn)
	for _, w := range warn {
		require.Equal(t, zapcore.WarnLevel, w.Level)
		for _, f := range w.Context {
			require.NotContains(t, f.String, pass)
		}
	}
}

// pushIndex pushes an index of the given manifests as repo:tag.
func pushIndex(t *testing.T, reg *registrytest.Registry, repo, tag string, entries []ocispec.Descriptor, auth string) digest.Digest {
	t.Helper()
	body, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: entries,
	})
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, reg.URL.JoinPath("v2", repo, "manifests", tag).String(), bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", ocispec.MediaTypeImageIndex)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	msg, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode, string(msg))
	return digest.FromBytes(body)
}

func TestResolveIndex(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	ctx := t.Context()
	arches := []string{"s390x", "arm64", runtime.GOARCH}
	if runtime.GOARCH == "arm64" {
		arches[1] = "amd64"
	}
	imgs := map[string]registrytest.Image{}
	var entries []ocispec.Descriptor
	// An attestation-like entry first, which must never be picked.
	att, err := reg.PushRandomImage(ctx, "multi/app", "att", 10)
	require.NoError(t, err)
	entries = append(entries, ocispec.Descriptor{MediaType: "application/vnd.example.other+json", Digest: att.Manifest,
		Size: int64(len(att.ManifestBody)), Platform: &ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}})
	for _, a := range arches {
		img, err := reg.PushRandomImage(ctx, "multi/app", "only-"+a, 100, 200)
		require.NoError(t, err)
		imgs[a] = img
		p := &ocispec.Platform{OS: "linux", Architecture: a}
		if a == "arm64" {
			p.Variant = "v8"
		}
		entries = append(entries, ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Manifest, Size: int64(len(img.ManifestBody)), Platform: p})
	}
	idx := pushIndex(t, reg, "multi/app", "1", entries, "")
	c := newClient(t, registrysource.WithInsecureRegistries([]string{"127.0.0.1"}))
	ref := reg.Host + "/multi/app:1"

	tests := []struct {
		name     string
		platform *ocispec.Platform
		want     string
		err      error
	}{
		{"default", nil, runtime.GOARCH, nil},
		{"s390x", &ocispec.Platform{OS: "linux", Architecture: "s390x"}, "s390x", nil},
		{"arm64 v8", &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, "arm64", nil},
		{"windows", &ocispec.Platform{OS: "windows", Architecture: "amd64"}, "", registrysource.ErrPlatformNotFound},
		{"arm v7", &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v9"}, "", registrysource.ErrPlatformNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := c.Resolve(t.Context(), ref, tt.platform, registrysource.Credentials{})
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				return
			}
			if tt.want == "arm64" && runtime.GOARCH == "arm64" {
				tt.want = runtime.GOARCH
			}
			require.NoError(t, err)
			want := imgs[tt.want]
			require.Equal(t, idx, got.Index)
			require.Equal(t, want.Manifest, got.Manifest)
			require.Equal(t, want.Layers, got.Layers)
			require.Equal(t, want.Config, got.Config)
			require.Equal(t, tt.want, got.Platform.Architecture)
		})
	}

	// The index by digest too.
	got, err := c.Resolve(ctx, reg.Host+"/multi/app@"+idx.String(), &ocispec.Platform{OS: "linux", Architecture: "s390x"}, registrysource.Credentials{})
	require.NoError(t, err)
	require.Equal(t, imgs["s390x"].Manifest, got.Manifest)
}

func TestResolveErrors(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	_, err := reg.PushRandomImage(t.Context(), "app", "1", 100)
	require.NoError(t, err)
	c := newClient(t, registrysource.WithInsecureRegistries([]string{reg.Host}))

	_, err = c.Resolve(t.Context(), reg.Host+"/app:missing", nil, registrysource.Credentials{})
	require.ErrorIs(t, err, source.ErrNotFound)
	_, err = c.Resolve(t.Context(), reg.Host+"/App:1", nil, registrysource.Credentials{})
	require.ErrorIs(t, err, registrysource.ErrInvalid)

	// A registry that is not in the insecure list is spoken to over TLS,
	// which a plain-http registry cannot answer.
	strict := newClient(t)
	_, err = strict.Resolve(t.Context(), reg.Host+"/app:1", nil, registrysource.Credentials{})
	require.Error(t, err)
	require.False(t, errors.Is(err, registrysource.ErrInvalid))

	// A schema 1 manifest is not resolved.
	base := tamper(t, reg.URL, func(resp *http.Response) error {
		body := []byte(`{"schemaVersion":1,"name":"app","tag":"1","fsLayers":[]}`)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Del("Content-Length")
		resp.Header.Del("Docker-Content-Digest")
		resp.Header.Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
		return nil
	})
	insecure := newClient(t, registrysource.WithInsecureRegistries([]string{base.Host}))
	_, err = insecure.Resolve(t.Context(), base.Host+"/app:1", nil, registrysource.Credentials{})
	require.ErrorIs(t, err, registrysource.ErrUnsupported)
}

func TestRedirectDropsAuthorizationAcrossHosts(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Length", "42")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(storage.Close)
	other := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)
	d := digest.FromString("blob")
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer client-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, other+"/bucket/"+d.Encoded(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(reg.Close)
	base, _ := url.Parse(reg.URL)
	c := newClient(t)
	desc, err := c.HeadBlob(t.Context(), base, "app", d, http.Header{"Authorization": {"Bearer client-token"}})
	require.NoError(t, err)
	require.Equal(t, int64(42), desc.Size)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{""}, seen)
}

func TestContextCancelled(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	c := newClient(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := c.GetManifest(ctx, reg.URL, "app", "1", nil, nil)
	require.ErrorIs(t, err, context.Canceled)
}

// front puts an httptest server in front of the registry that answers
// unauthenticated requests with challenge and lets through those check
// accepts.
func front(t *testing.T, target *url.URL, challenge string, check func(*http.Request) bool) *url.URL {
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !check(r) {
			w.Header().Set("WWW-Authenticate", challenge)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u
}

func TestBasicAuthRegistry(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "app", "1", 100)
	require.NoError(t, err)
	base := front(t, reg.URL, `Basic realm="registry"`, func(r *http.Request) bool {
		u, p, ok := r.BasicAuth()
		return ok && u == user && p == pass
	})
	rec, hc := newRecorder(t)
	c := registrysource.New(registrysource.WithHTTPClient(hc), registrysource.WithInsecureRegistries([]string{base.Host}))

	got, err := c.Resolve(t.Context(), base.Host+"/app:1", nil, registrysource.Credentials{Username: user, Password: pass})
	require.NoError(t, err)
	require.Equal(t, img.Manifest, got.Manifest)
	h, err := got.Auth.Header(t.Context())
	require.NoError(t, err)
	_, err = c.HeadBlob(t.Context(), base, "app", img.Layers[0].Digest, h)
	require.NoError(t, err)
	require.Empty(t, rec.to("/token"), "no token dance for Basic")

	_, err = c.Resolve(t.Context(), base.Host+"/app:1", nil, registrysource.Credentials{Username: user, Password: "wrong"})
	var re *registrysource.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)
	require.Equal(t, errcode.ErrorCodeUnauthorized, re.Errors()[0].(errcode.Error).Code)
}

func TestRealmMustBeHTTP(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	_, err := reg.PushRandomImage(t.Context(), "app", "1", 100)
	require.NoError(t, err)
	for _, realm := range []string{"file:///etc/passwd", "gopher://h/x", "http:///nohost"} {
		base := front(t, reg.URL, `Bearer realm="`+realm+`",service="s"`, func(*http.Request) bool { return false })
		c := newClient(t, registrysource.WithInsecureRegistries([]string{base.Host}))
		_, err := c.Resolve(t.Context(), base.Host+"/app:1", nil, registrysource.Credentials{Username: user, Password: pass})
		require.ErrorIs(t, err, registrysource.ErrInvalid, realm)
	}
}

func TestNoCredentialsToPlainHTTPRealmOfHTTPSRegistry(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	_, err := reg.PushRandomImage(t.Context(), "private/app", "1", 100)
	require.NoError(t, err)
	// The registry behind TLS; its realm stays http://127.0.0.1:<port>.
	srv := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(reg.URL))
	t.Cleanup(srv.Close)
	tr := srv.Client().Transport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	rec := &recorder{next: tr}
	c := registrysource.New(registrysource.WithHTTPClient(&http.Client{Transport: rec}))
	host := strings.TrimPrefix(srv.URL, "https://")

	_, err = c.Resolve(t.Context(), host+"/private/app:1", nil, registrysource.Credentials{Username: user, Password: pass})
	var re *registrysource.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode)
	toks := rec.to("/token")
	require.NotEmpty(t, toks)
	for _, r := range toks {
		require.Empty(t, r.auth, "no password over plain http for an https registry")
	}
}

// TestRealmOnAnotherPortGetsNoCredentials: a token realm on the registry's
// IP but another port (a separate service, maybe someone else's) gets no
// password; the registry's own port does.
func TestRealmOnAnotherPortGetsNoCredentials(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}), registrytest.WithRealmOnOwnPort())
	_, err := reg.PushRandomImage(t.Context(), "private/app", "1", 100)
	require.NoError(t, err)
	realm, err := url.Parse(reg.Realm())
	require.NoError(t, err)
	require.Equal(t, reg.URL.Hostname(), realm.Hostname(), "same IP")
	require.NotEqual(t, reg.URL.Port(), realm.Port(), "another port")
	core, logs := observer.New(zapcore.DebugLevel)
	rec, hc := newRecorder(t)
	c := registrysource.New(registrysource.WithHTTPClient(hc), registrysource.WithLogger(zap.New(core)),
		registrysource.WithInsecureRegistries([]string{reg.Host}))

	_, err = c.Resolve(t.Context(), reg.Host+"/private/app:1", nil, registrysource.Credentials{Username: user, Password: pass})
	var re *registrysource.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, http.StatusUnauthorized, re.StatusCode, "an anonymous token has no access")
	toks := rec.to("/token")
	require.NotEmpty(t, toks)
	for _, r := range toks {
		require.Empty(t, r.auth, "no password to a realm on another port")
	}
	require.NotEmpty(t, logs.FilterMessageSnippet("another host or port").All())
}

func TestSameOrigin(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"https://ghcr.io/token", "https://ghcr.io", true},
		{"https://GHCR.io:443/token", "https://ghcr.io", true},
		{"http://10.0.0.1:5000/token", "http://10.0.0.1:5000", true},
		{"http://10.0.0.1:5001/token", "http://10.0.0.1:5000", false},
		{"http://10.0.0.1/token", "http://10.0.0.1:5000", false},
		{"https://h/token", "http://h", false}, // 443 is not 80
		{"https://auth.docker.io/token", "https://registry-1.docker.io", false},
	} {
		a, err := url.Parse(tt.a)
		require.NoError(t, err)
		b, err := url.Parse(tt.b)
		require.NoError(t, err)
		require.Equal(t, tt.want, registrysource.SameOrigin(a, b), "%s %s", tt.a, tt.b)
	}
}
