package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	dfdaemoncmd "github.com/damselfly/damselfly/dfdaemon/cmd"
	"github.com/damselfly/damselfly/pkg/registrytest"
	supernodecmd "github.com/damselfly/damselfly/supernode/cmd"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// Credentials used on every path (a runtime's registry token through the
// mirror, a dfget --header, a preheat's password and header) appear
// nowhere they could leak from: not in any component's debug log, not in
// any file under any data dir, not in any admin API or metrics answer, not
// in any task ID. And a client without credentials still gets no private
// blob through the mirror that cached it.
func TestSecretsNeverLeak(t *testing.T) {
	skipShort(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	password := "pw-" + randomHex(t)
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": password}))
	img, err := reg.PushRandomImage(ctx, "private/app", "v1", 3*mib, 1*mib)
	require.NoError(t, err)

	// An origin that serves a file only to the holder of a bearer canary.
	canary := "canary-" + randomHex(t)
	fileCanary := "filecanary-" + randomHex(t)
	content := make([]byte, 5*mib+17)
	_, err = rand.Read(content)
	require.NoError(t, err)
	private := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Authorization") {
		case "Bearer " + canary, "Bearer " + fileCanary:
			http.ServeContent(w, r, "private", time.Time{}, bytes.NewReader(content))
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="private"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		}
	}))
	t.Cleanup(private.Close)

	var logs []*syncBuffer
	newLogger := func() *zap.Logger {
		b := &syncBuffer{}
		logs = append(logs, b)
		return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
			zapcore.AddSync(b), zap.DebugLevel))
	}
	sn, snDir := startLoggedSupernode(t, newLogger(), "--config", writeConfig(t,
		"preheat:\n  insecureRegistries: ["+reg.Host+"]\n"))
	mirror, ddDir := startLoggedDfdaemon(t, newLogger(), sn.addr, reg.URL.String())

	// A runtime pulls the image through the mirror with its own token.
	alice := &client{reg: reg, user: "alice", pass: password}
	st, err := alice.pull(ctx, mirror, img)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, st)
	// Without credentials the mirror that holds the blobs gives none away.
	for _, l := range img.Layers {
		st, err := (&client{}).blob(ctx, mirror, img.Repo, l.Digest)
		require.NoError(t, err)
		require.Equal(t, http.StatusUnauthorized, st)
	}

	// dfget with a bearer header, debug logs, a kept data dir.
	dir := t.TempDir()
	dfgetDir := filepath.Join(dir, "dfget-data")
	out := filepath.Join(dir, "out", "private.bin")
	require.NoError(t, os.MkdirAll(filepath.Dir(out), 0o755))
	d := startDfget(t, ctx, private.URL+"/private.bin", out, "--node", sn.addr, "--notbs",
		"--header", "Authorization: Bearer "+canary, "--log-level", "debug", "--data-dir", dfgetDir)
	require.NoError(t, d.wait(t, time.Minute), d.stderr.String())
	require.Equal(t, content, mustRead(t, out))
	require.NotEmpty(t, d.stderr.String(), "dfget logged nothing at debug, so the search proves nothing")

	// Preheats with credentials in the request: an image with a password,
	// a file with a header.
	imgPreheat := sn.preheat(t, map[string]any{"type": "image", "url": reg.Host + "/" + img.Repo + ":" + img.Tag,
		"username": "alice", "password": password})
	filePreheat := sn.preheat(t, map[string]any{"type": "file", "url": private.URL + "/other.bin",
		"headers": map[string]string{"Authorization": "Bearer " + fileCanary}})
	var answers [][]byte
	for _, id := range []string{imgPreheat, filePreheat} {
		require.Eventually(t, func() bool {
			var p struct {
				State string `json:"state"`
			}
			sn.adminGet(t, "/api/v1/preheats/"+id, &p)
			return p.State == "succeeded"
		}, time.Minute, 50*time.Millisecond, "preheat %s", id)
		answers = append(answers, sn.adminRaw(t, "/api/v1/preheats/"+id))
	}

	tokens := alice.allTokens()
	require.NotEmpty(t, tokens, "the client never needed a token, so the search proves nothing")
	secrets := append([]string{password, canary, fileCanary, supernodetest.ClusterToken}, tokens...)

	// Every admin answer, every task ID, the metrics of both servers.
	answers = append(answers, sn.adminRaw(t, "/api/v1/tasks"), sn.adminRaw(t, "/api/v1/peers"))
	tasks := sn.tasks(t)
	require.GreaterOrEqual(t, len(tasks), len(img.Blobs())+2)
	for _, task := range tasks {
		answers = append(answers, []byte(task.TaskID), sn.adminRaw(t, "/api/v1/tasks/"+task.TaskID))
	}
	answers = append(answers, httpGet(t, "http://"+sn.addr+"/metrics"), httpGet(t, "http://"+mirror+"/metrics"))
	for i, a := range answers {
		assertNoSecret(t, fmt.Sprintf("answer %d", i), a, secrets)
	}
	for i, l := range logs {
		require.NotEmpty(t, l.String(), "log %d is empty, so the search proves nothing", i)
		assertNoSecret(t, fmt.Sprintf("log %d", i), []byte(l.String()), secrets)
	}
	assertNoSecret(t, "dfget stderr", []byte(d.stderr.String()), secrets)
	files := 0
	for _, root := range []string{snDir, ddDir, dfgetDir, filepath.Dir(out)} {
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) && path == root {
				return nil // dfget removes its data dir once done
			}
			if err != nil || e.IsDir() {
				return err
			}
			files++
			assertNoSecret(t, path, mustRead(t, path), secrets)
			return nil
		})
		require.NoError(t, err)
	}
	require.Greater(t, files, len(img.Blobs()), "no data files searched")
}

// assertNoSecret fails if b holds any secret, as is or base64-encoded.
func assertNoSecret(t *testing.T, where string, b []byte, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		forms := []string{s, "Bearer " + s}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			forms = append(forms, enc.EncodeToString([]byte(s)), enc.EncodeToString([]byte("Bearer "+s)),
				enc.EncodeToString([]byte("alice:"+s)))
		}
		for _, f := range forms {
			if i := bytes.Index(b, []byte(f)); i >= 0 {
				t.Errorf("%s holds a secret (%.12s...) at byte %d: %q", where, s, i,
					b[max(0, i-80):min(len(b), i+len(f)+40)])
			}
		}
	}
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, url)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return b
}

func (c *client) allTokens() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, tok := range c.tokens {
		out = append(out, tok)
	}
	return out
}

// adminRaw returns the body of an authenticated admin GET answered 200.
func (s *supernode) adminRaw(t *testing.T, path string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.addr+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, b)
	return b
}

// preheat starts a preheat and returns its ID.
func (s *supernode) preheat(t *testing.T, body map[string]any) string {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, "http://"+s.addr+"/api/v1/preheats", bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", answer)
	loc := resp.Header.Get("Location")
	require.True(t, strings.HasPrefix(loc, "/api/v1/preheats/"), "Location %q", loc)
	return strings.TrimPrefix(loc, "/api/v1/preheats/")
}

// startLoggedSupernode runs a supernode in this process logging to l, and
// returns it with its data dir.
func startLoggedSupernode(t *testing.T, l *zap.Logger, extraArgs ...string) (*supernode, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "supernode")
	token := "e2e-admin-token"
	args := append([]string{
		"--listen", "127.0.0.1:0", "--data-dir", dir, "--admin-token", token,
		"--source-allow", "127.0.0.1/32", "--cluster-token-file", clusterTokenFile(t),
	}, extraArgs...)
	ready := make(chan net.Addr, 1)
	a := runInProcess(t, "supernode", func(ctx context.Context) error {
		return supernodecmd.Run(ctx, args, supernodecmd.WithLogger(l),
			supernodecmd.WithReady(func(a net.Addr) { ready <- a }))
	}, ready)
	return &supernode{addr: a.String(), token: token}, dir
}

// startLoggedDfdaemon runs a dfdaemon in this process logging to l, and
// returns its mirror address and its data dir.
func startLoggedDfdaemon(t *testing.T, l *zap.Logger, node, upstream string, extraArgs ...string) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "dfdaemon")
	args := append([]string{
		"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
		"--node", node, "--registry", upstream, "--data-dir", dir,
		"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
		"--cluster-token-file", clusterTokenFile(t),
	}, extraArgs...)
	ready := make(chan net.Addr, 1)
	a := runInProcess(t, "dfdaemon", func(ctx context.Context) error {
		return dfdaemoncmd.Run(ctx, args, dfdaemoncmd.WithLogger(l),
			dfdaemoncmd.WithReady(func(mirror, _ net.Addr) { ready <- mirror }))
	}, ready)
	return a.String(), dir
}

// runInProcess runs a component until the test ends and returns the address
// it reports on ready.
func runInProcess(t *testing.T, name string, run func(ctx context.Context) error, ready <-chan net.Addr) net.Addr {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("%s exited: %v", name, err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop within 15s", name)
		}
	})
	select {
	case a := <-ready:
		return a
	case err := <-done:
		t.Fatalf("%s did not start: %v", name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start within 30s", name)
	}
	return nil
}
