package preheat_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

func TestMain(m *testing.M) {
	// The embedded registry's notification broadcaster has no way to stop.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

const (
	user = "ops"
	pass = "preheat-s3cret"
)

type env struct {
	tasks *task.Manager
	sched *scheduler.Scheduler
	p     *preheat.Preheater
	logs  *observer.ObservedLogs
	stop  func()
}

// newEnv runs a real scheduler, CDN (on a disk store, fetching over plain
// HTTP) and preheater until the test ends.
func newEnv(t *testing.T, cfg preheat.Config, opts ...preheat.Option) *env {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	store, err := local.New(t.TempDir())
	require.NoError(t, err)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	tasks, err := task.New(task.Config{Scheduler: scheduler.Config{}.ApplyDefaults(), CDN: cdn.Config{Dir: t.TempDir()}.ApplyDefaults()},
		schedapi.Peer{ID: "supernode", Addr: "127.0.0.1:1"}, store, httpsource.New(httpsource.WithHTTPClient(hc)))
	require.NoError(t, err)
	rs := registrysource.New(registrysource.WithHTTPClient(hc), registrysource.WithInsecureRegistries(cfg.InsecureRegistries),
		registrysource.WithLogger(logger))
	p := preheat.New(cfg, rs, tasks, append([]preheat.Option{preheat.WithLogger(logger)}, opts...)...)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{tasks.Run, p.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("run: %v", err)
			}
		}()
	}
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return &env{tasks: tasks, sched: tasks.Scheduler(), p: p, logs: logs, stop: stop}
}

// wait polls a preheat until it is no longer running.
func (e *env) wait(t *testing.T, id string) preheat.Status {
	t.Helper()
	var st preheat.Status
	require.Eventually(t, func() bool {
		var err error
		st, err = e.p.Get(t.Context(), id)
		require.NoError(t, err)
		return st.State != preheat.StateRunning
	}, 20*time.Second, 10*time.Millisecond)
	return st
}

func (e *env) noSecretsLogged(t *testing.T, secrets ...string) {
	t.Helper()
	for _, entry := range e.logs.All() {
		line := entry.Message
		for _, f := range entry.Context {
			line += " " + f.String
			if f.Interface != nil {
				if err, ok := f.Interface.(error); ok {
					line += " " + err.Error()
				}
			}
		}
		for _, s := range secrets {
			require.NotContains(t, line, s)
		}
	}
}

func TestPreheatPrivateImage(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 5<<20, 300_000, 1000)
	require.NoError(t, err)
	e := newEnv(t, preheat.Config{InsecureRegistries: []string{reg.Host}, Registries: map[string]preheat.RegistryCredentials{
		reg.Host: {Username: user, Password: pass},
	}})
	reg.ResetStats()

	st, err := e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeImage, URL: reg.Host + "/team/app:v1"})
	require.NoError(t, err)
	require.Equal(t, preheat.StateRunning, st.State)
	require.Len(t, st.ID, 32)
	require.Equal(t, reg.Host+"/team/app:v1", st.Image)

	st = e.wait(t, st.ID)
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
	require.Equal(t, img.Manifest, st.Manifest)
	require.NotNil(t, st.FinishedAt)
	blobs := img.Blobs()
	require.Len(t, st.Layers, len(blobs))
	stats := reg.Stats()
	for i, b := range blobs {
		l := st.Layers[i]
		require.Equal(t, b.Digest, l.Digest)
		require.Equal(t, b.Digest.String(), l.TaskID.String())
		require.Equal(t, b.Size, l.Size)
		require.Equal(t, preheat.StateSucceeded, l.State)
		require.Positive(t, l.PieceCount)
		require.Equal(t, l.PieceCount, l.Published)
		require.Equal(t, 1, stats.BlobGETs[b.Digest], "the registry sent %s once", b.Digest)

		info, err := e.sched.TaskInfo(t.Context(), l.TaskID)
		require.NoError(t, err)
		require.Equal(t, schedapi.TaskSucceeded, info.State)
		require.Equal(t, b.Digest.String(), info.ContentDigest)
	}

	// Asking the CDN for a layer again, as a peer's registration does, is
	// answered from the cache.
	reg.ResetStats()
	for _, b := range blobs {
		u, err := registrysource.BlobURL(reg.URL, "team/app", b.Digest)
		require.NoError(t, err)
		id, err := taskid.ForDigest(b.Digest)
		require.NoError(t, err)
		info, err := e.tasks.Ensure(t.Context(), task.Request{TaskID: id, URL: u, Digest: b.Digest})
		require.NoError(t, err)
		require.Equal(t, schedapi.TaskSucceeded, info.State)
	}
	require.Zero(t, reg.Stats().BlobBytes)
	require.Empty(t, reg.Stats().BlobGETs)
	e.noSecretsLogged(t, pass)
}

func TestPreheatCredentials(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 1000)
	require.NoError(t, err)
	e := newEnv(t, preheat.Config{InsecureRegistries: []string{reg.Host}})
	ref := reg.Host + "/team/app:v1"

	tests := []struct {
		name  string
		req   preheat.Request
		state preheat.State
		in    string
	}{
		{"no credentials", preheat.Request{}, preheat.StateFailed, "401"},
		{"wrong password", preheat.Request{Username: user, Password: "not-the-password"}, preheat.StateFailed, "401"},
		{"request credentials", preheat.Request{Username: user, Password: pass}, preheat.StateSucceeded, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.Type, req.URL = preheat.TypeImage, ref
			st, err := e.p.Create(t.Context(), req)
			require.NoError(t, err)
			st = e.wait(t, st.ID)
			require.Equal(t, tt.state, st.State, st.Error)
			require.Contains(t, st.Error, tt.in)
			require.NotContains(t, st.Error, "not-the-password")
		})
	}
	// A token the client already has.
	tok, err := reg.Token(t.Context(), user, pass, "repository:team/app:pull")
	require.NoError(t, err)
	st, err := e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeImage, URL: ref + "@" + img.Manifest.String(), Token: tok})
	require.NoError(t, err)
	st = e.wait(t, st.ID)
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
	e.noSecretsLogged(t, pass, "not-the-password", tok)
}

func TestPreheatFile(t *testing.T) {
	t.Parallel()
	body := []byte(strings.Repeat("file to preheat ", 100_000))
	d := digest.FromBytes(body)
	var gets atomic.Int32
	var gotAuth atomic.Value
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		gotAuth.Store(r.Header.Get("Authorization"))
		http.ServeContent(w, r, "f", time.Unix(0, 0), strings.NewReader(string(body)))
	}))
	t.Cleanup(origin.Close)
	e := newEnv(t, preheat.Config{})

	st, err := e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + "/f?sig=abc", Digest: d.String(),
		Headers: map[string]string{"Authorization": "Bearer file-secret"}})
	require.NoError(t, err)
	require.Equal(t, origin.URL+"/f", st.URL, "no query in the status")
	st = e.wait(t, st.ID)
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
	require.Len(t, st.Layers, 1)
	require.Equal(t, d.String(), st.Layers[0].TaskID.String())
	require.Equal(t, int64(len(body)), st.Layers[0].Size)
	require.EqualValues(t, 1, gets.Load())
	require.Equal(t, "Bearer file-secret", gotAuth.Load())

	// Without a digest the task is the URL's.
	st, err = e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + "/other"})
	require.NoError(t, err)
	st = e.wait(t, st.ID)
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
	id, err := taskid.ForURL(origin.URL+"/other", nil, "")
	require.NoError(t, err)
	require.Equal(t, id, st.Layers[0].TaskID)

	// Content that does not match the digest fails.
	st, err = e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + "/x", Digest: digest.FromString("else").String()})
	require.NoError(t, err)
	st = e.wait(t, st.ID)
	require.Equal(t, preheat.StateFailed, st.State)
	require.Equal(t, preheat.StateFailed, st.Layers[0].State)
	require.NotEmpty(t, st.Error)
	e.noSecretsLogged(t, "file-secret", "sig=abc")
}

func TestCreateRejectsBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, preheat.Config{})
	d := digest.FromString("x").String()
	tests := []struct {
		name string
		req  preheat.Request
	}{
		{"no type", preheat.Request{URL: "127.0.0.1:5000/app:1"}},
		{"unknown type", preheat.Request{Type: "chart", URL: "127.0.0.1:5000/app:1"}},
		{"bad image", preheat.Request{Type: preheat.TypeImage, URL: "127.0.0.1:5000/App:1"}},
		{"image with scheme", preheat.Request{Type: preheat.TypeImage, URL: "http://127.0.0.1:5000/app:1"}},
		{"empty image", preheat.Request{Type: preheat.TypeImage}},
		{"bad platform", preheat.Request{Type: preheat.TypeImage, URL: "app:1", Platform: "linux"}},
		{"image with headers", preheat.Request{Type: preheat.TypeImage, URL: "app:1", Headers: map[string]string{"A": "b"}}},
		{"token and password", preheat.Request{Type: preheat.TypeImage, URL: "app:1", Token: "t", Password: "p"}},
		{"file without url", preheat.Request{Type: preheat.TypeFile}},
		{"file ftp", preheat.Request{Type: preheat.TypeFile, URL: "ftp://h/x"}},
		{"file bad digest", preheat.Request{Type: preheat.TypeFile, URL: "http://h/x", Digest: "md5:abc"}},
		{"file header injection", preheat.Request{Type: preheat.TypeFile, URL: "http://h/x", Headers: map[string]string{"X": "a\r\nHost: evil"}}},
		{"file bad header name", preheat.Request{Type: preheat.TypeFile, URL: "http://h/x", Headers: map[string]string{"A B": "c"}}},
		{"file with password", preheat.Request{Type: preheat.TypeFile, URL: "http://h/x", Digest: d, Password: "p"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := e.p.Create(t.Context(), tt.req)
			require.ErrorIs(t, err, preheat.ErrInvalid)
		})
	}
	_, err := e.p.Get(t.Context(), "0123456789abcdef0123456789abcdef")
	require.ErrorIs(t, err, preheat.ErrNotFound)
	_, err = e.p.Get(t.Context(), "../../etc")
	require.ErrorIs(t, err, preheat.ErrNotFound)
}

func TestRecordsAreBounded(t *testing.T) {
	t.Parallel()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "small "+r.URL.Path)
	}))
	t.Cleanup(origin.Close)
	e := newEnv(t, preheat.Config{}, preheat.WithMaxRecords(2))
	var ids []string
	for _, p := range []string{"/a", "/b", "/c"} {
		st, err := e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + p})
		require.NoError(t, err)
		e.wait(t, st.ID)
		ids = append(ids, st.ID)
	}
	_, err := e.p.Get(t.Context(), ids[0])
	require.ErrorIs(t, err, preheat.ErrNotFound, "the oldest is dropped")
	for _, id := range ids[1:] {
		_, err := e.p.Get(t.Context(), id)
		require.NoError(t, err)
	}
}

func TestStopCancelsRunningPreheats(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "part")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(origin.Close)
	t.Cleanup(func() { close(release) })
	e := newEnv(t, preheat.Config{})
	st, err := e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + "/slow"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := e.p.Get(t.Context(), st.ID)
		require.NoError(t, err)
		return got.Layers[0].State == preheat.StateRunning
	}, 10*time.Second, 10*time.Millisecond)

	e.stop()
	got, err := e.p.Get(t.Context(), st.ID)
	require.NoError(t, err)
	require.Equal(t, preheat.StateFailed, got.State)
	_, err = e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + "/late"})
	require.ErrorIs(t, err, preheat.ErrClosed)
}

func TestPreheatTimeout(t *testing.T) {
	t.Parallel()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(origin.Close)
	e := newEnv(t, preheat.Config{Timeout: 300 * time.Millisecond})
	st, err := e.p.Create(t.Context(), preheat.Request{Type: preheat.TypeFile, URL: origin.URL + "/hang"})
	require.NoError(t, err)
	st = e.wait(t, st.ID)
	require.Equal(t, preheat.StateFailed, st.State)
	require.Contains(t, st.Error, "timed out")
}

func TestConfig(t *testing.T) {
	t.Parallel()
	c := preheat.Config{}.ApplyDefaults()
	require.Equal(t, preheat.DefaultTimeout, c.Timeout)
	require.NoError(t, c.Validate())

	bad := preheat.Config{
		Timeout:            -time.Second,
		Registries:         map[string]preheat.RegistryCredentials{"http://x": {}, "ok:5000": {Username: "u", Token: "t"}},
		InsecureRegistries: []string{"a/b", ""},
	}
	err := bad.Validate()
	require.Error(t, err)
	for _, want := range []string{"preheat.timeout", `"http://x"`, "ok:5000", `"a/b"`, "insecureRegistries"} {
		require.Contains(t, err.Error(), want)
	}
	good := preheat.Config{Registries: map[string]preheat.RegistryCredentials{"Registry.example:5000": {Username: "u", Password: "p"}}}
	require.NoError(t, good.Validate())
	require.Equal(t, registrysource.Credentials{Username: "u", Password: "p"}, good.Credentials()["registry.example:5000"])
	require.Equal(t, "user u", good.Registries["Registry.example:5000"].String(), "no password in its string")
}
