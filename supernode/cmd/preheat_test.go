package cmd

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/supernode/adminapi"
	"github.com/damselfly/damselfly/supernode/preheat"
)

// waitPreheat polls a preheat until it is no longer running.
func (s *supernode) waitPreheat(t *testing.T, id, token string) preheat.Status {
	t.Helper()
	var st preheat.Status
	require.Eventually(t, func() bool {
		status, b := s.do(t, http.MethodGet, "/api/v1/preheats/"+id, token, nil)
		require.Equal(t, http.StatusOK, status, string(b))
		require.NoError(t, json.Unmarshal(b, &st))
		return st.State != preheat.StateRunning
	}, 30*time.Second, 20*time.Millisecond)
	return st
}

func TestPreheatImage(t *testing.T) {
	t.Parallel()
	const user, pass = "ci", "registry-pa55word"
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{user: pass}))
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 4<<20+100, 200_000, 5000)
	require.NoError(t, err)

	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "supernode.yaml")
	require.NoError(t, os.WriteFile(cfgFile, fmt.Appendf(nil, `
preheat:
  registries:
    %q: {username: %s, password: %s}
  insecureRegistries: [%q]
`, reg.Host, user, pass, reg.Host), 0o600))
	sn := start(t, []string{"--config", cfgFile, "--data-dir", filepath.Join(dir, "data"),
		"--admin-token", "tok", "--source-allow", "127.0.0.1/32"})
	reg.ResetStats()

	req := preheat.Request{Type: preheat.TypeImage, URL: reg.Host + "/library/app:1"}
	status, b := sn.do(t, http.MethodPost, "/api/v1/preheats", "", req)
	require.Equal(t, http.StatusUnauthorized, status, string(b))
	status, b = sn.do(t, http.MethodPost, "/api/v1/preheats", "tok", preheat.Request{Type: preheat.TypeImage, URL: "Not A Reference"})
	require.Equal(t, http.StatusBadRequest, status, string(b))
	status, b = sn.do(t, http.MethodGet, "/api/v1/preheats/0123456789abcdef0123456789abcdef", "tok", nil)
	require.Equal(t, http.StatusNotFound, status, string(b))
	require.Zero(t, reg.Stats().Requests, "refused preheats never reach the registry")

	status, b = sn.do(t, http.MethodPost, "/api/v1/preheats", "tok", req)
	require.Equal(t, http.StatusAccepted, status, string(b))
	var st preheat.Status
	require.NoError(t, json.Unmarshal(b, &st))
	require.Equal(t, preheat.StateRunning, st.State)
	st = sn.waitPreheat(t, st.ID, "tok")
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
	require.Equal(t, img.Manifest, st.Manifest)

	// Every blob is cached in the CDN, fetched from the registry once.
	stats := reg.Stats()
	require.Len(t, st.Layers, len(img.Blobs()))
	for i, blob := range img.Blobs() {
		require.Equal(t, blob.Digest, st.Layers[i].Digest)
		require.Equal(t, preheat.StateSucceeded, st.Layers[i].State)
		require.Equal(t, st.Layers[i].PieceCount, st.Layers[i].Published)
		require.Equal(t, 1, stats.BlobGETs[blob.Digest])

		status, b := sn.do(t, http.MethodGet, "/api/v1/tasks/"+blob.Digest.String(), "tok", nil)
		require.Equal(t, http.StatusOK, status, string(b))
		var task adminapi.Task
		require.NoError(t, json.Unmarshal(b, &task))
		require.Equal(t, string(schedapi.TaskSucceeded), task.State)
		require.Equal(t, blob.Size, task.BytesFromSource)
	}

	// A peer that then registers for a layer is served from the cache: the
	// registry sends nothing, and needs no credentials from the peer.
	reg.ResetStats()
	for i, blob := range img.Layers {
		u, err := registrysource.BlobURL(reg.URL, "library/app", blob.Digest)
		require.NoError(t, err)
		status, b := sn.member(t, http.MethodPost, schedapi.RegisterPath(), schedapi.RegisterRequest{
			Peer: schedapi.Peer{ID: fmt.Sprintf("peer-%d", i), Addr: "127.0.0.1:1"}, URL: u, Digest: blob.Digest.String(),
		})
		require.Equal(t, http.StatusOK, status, string(b))
		var rr schedapi.RegisterResponse
		require.NoError(t, json.Unmarshal(b, &rr))
		require.Equal(t, blob.Digest.String(), rr.TaskID)
		require.Equal(t, schedapi.TaskSucceeded, rr.State, rr.Error)
	}
	require.Empty(t, reg.Stats().BlobGETs)
	require.Zero(t, reg.Stats().BlobBytes)

	sn.stop()
	require.NotContains(t, sn.logs.String(), pass, "credentials are never logged")
}

func TestPreheatFollowsTheSourcePolicy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	_, err := reg.PushRandomImage(t.Context(), "app", "1", 100)
	require.NoError(t, err)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "supernode.yaml")
	require.NoError(t, os.WriteFile(cfgFile, fmt.Appendf(nil, "preheat:\n  insecureRegistries: [%q]\n", reg.Host), 0o600))
	sn := start(t, []string{"--config", cfgFile, "--data-dir", filepath.Join(dir, "data"), "--admin-token", "tok"})
	reg.ResetStats()

	status, b := sn.do(t, http.MethodPost, "/api/v1/preheats", "tok", preheat.Request{Type: preheat.TypeImage, URL: reg.Host + "/app:1"})
	require.Equal(t, http.StatusAccepted, status, string(b))
	var st preheat.Status
	require.NoError(t, json.Unmarshal(b, &st))
	st = sn.waitPreheat(t, st.ID, "tok")
	require.Equal(t, preheat.StateFailed, st.State)
	require.Contains(t, st.Error, "denied by the outbound policy")
	require.Zero(t, reg.Stats().Requests, "loopback is denied unless allowed")
}

func TestPreheatConfigIsValidated(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "supernode.yaml")
	require.NoError(t, os.WriteFile(p, []byte("preheat:\n  timeout: -1s\n  insecureRegistries: [\"a/b\"]\n"), 0o600))
	err := Run(t.Context(), []string{"--config", p, "--data-dir", t.TempDir()}, withEnv(noEnv))
	require.Error(t, err)
	require.Contains(t, err.Error(), "preheat.timeout")
	require.Contains(t, err.Error(), "preheat.insecureRegistries")
}

// A preheat of a plain-http registry the supernode was not told about fails
// saying how to allow it; "insecure": true in the request, or
// --preheat-insecure-registry, allows it.
func TestPreheatPlainHTTPRegistry(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	_, err := reg.PushRandomImage(t.Context(), "library/plain", "1", 100_000)
	require.NoError(t, err)
	dir := t.TempDir()
	sn := start(t, []string{"--data-dir", filepath.Join(dir, "a"), "--admin-token", "tok", "--source-allow", "127.0.0.1/32"})
	req := preheat.Request{Type: preheat.TypeImage, URL: reg.Host + "/library/plain:1"}
	status, b := sn.do(t, http.MethodPost, "/api/v1/preheats", "tok", req)
	require.Equal(t, http.StatusAccepted, status, string(b))
	var st preheat.Status
	require.NoError(t, json.Unmarshal(b, &st))
	st = sn.waitPreheat(t, st.ID, "tok")
	require.Equal(t, preheat.StateFailed, st.State)
	for _, hint := range []string{"plain http", "preheat.insecureRegistries", "--preheat-insecure-registry " + reg.Host, `"insecure": true`} {
		require.Contains(t, st.Error, hint)
	}

	req.Insecure = true
	status, b = sn.do(t, http.MethodPost, "/api/v1/preheats", "tok", req)
	require.Equal(t, http.StatusAccepted, status, string(b))
	require.NoError(t, json.Unmarshal(b, &st))
	st = sn.waitPreheat(t, st.ID, "tok")
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
	// GET /api/v1/preheats lists both, newest first.
	status, b = sn.do(t, http.MethodGet, "/api/v1/preheats", "tok", nil)
	require.Equal(t, http.StatusOK, status, string(b))
	var list struct {
		Preheats []preheat.Status `json:"preheats"`
	}
	require.NoError(t, json.Unmarshal(b, &list))
	require.Len(t, list.Preheats, 2)
	require.Equal(t, st.ID, list.Preheats[0].ID)
	require.Equal(t, preheat.StateFailed, list.Preheats[1].State)
	status, _ = sn.do(t, http.MethodGet, "/api/v1/preheats", "", nil)
	require.Equal(t, http.StatusUnauthorized, status)

	sn2 := start(t, []string{"--data-dir", filepath.Join(dir, "b"), "--admin-token", "tok", "--source-allow", "127.0.0.1/32",
		"--preheat-insecure-registry", reg.Host})
	req.Insecure = false
	status, b = sn2.do(t, http.MethodPost, "/api/v1/preheats", "tok", req)
	require.Equal(t, http.StatusAccepted, status, string(b))
	require.NoError(t, json.Unmarshal(b, &st))
	st = sn2.waitPreheat(t, st.ID, "tok")
	require.Equal(t, preheat.StateSucceeded, st.State, st.Error)
}
