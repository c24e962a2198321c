package adminapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/damselfly/damselfly/supernode/preheat"
)

// fakePreheater keeps what it is asked, and answers like the real one:
// ErrInvalid for a request without a type, ErrNotFound for an unknown ID.
type fakePreheater struct {
	mu     sync.Mutex
	got    []preheat.Request
	byID   map[string]preheat.Status
	closed bool
}

func (f *fakePreheater) Create(_ context.Context, req preheat.Request) (preheat.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return preheat.Status{}, preheat.ErrClosed
	}
	if req.Type == "" {
		return preheat.Status{}, fmt.Errorf("type: missing: %w", preheat.ErrInvalid)
	}
	f.got = append(f.got, req)
	id := fmt.Sprintf("%032x", len(f.got))
	st := preheat.Status{ID: id, Type: req.Type, State: preheat.StateRunning, Image: req.URL, Layers: []preheat.Layer{}}
	f.byID[id] = st
	return st, nil
}

func (f *fakePreheater) Get(_ context.Context, id string) (preheat.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.byID[id]
	if !ok {
		return preheat.Status{}, fmt.Errorf("preheat %q: %w", id, preheat.ErrNotFound)
	}
	return st, nil
}

func preheatServer(t *testing.T, p Preheater) (*httptest.Server, *observer.ObservedLogs) {
	t.Helper()
	f := newFixture(t)
	core, logs := observer.New(zapcore.DebugLevel)
	opts := []Option{WithLogger(zap.New(core))}
	if p != nil {
		opts = append(opts, WithPreheater(p))
	}
	srv := httptest.NewServer(New(f.sched, f.cdn, token, opts...))
	t.Cleanup(srv.Close)
	return srv, logs
}

func send(t *testing.T, srv *httptest.Server, method, path, auth, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func TestPreheatRoutes(t *testing.T) {
	t.Parallel()
	fp := &fakePreheater{byID: map[string]preheat.Status{}}
	srv, logs := preheatServer(t, fp)
	auth := "Bearer " + token
	secret := "hunter2-registry-password"

	body := `{"type":"image","url":"127.0.0.1:5000/library/app:1","platform":"linux/arm64","username":"u","password":"` + secret + `"}`
	resp, b := send(t, srv, http.MethodPost, "/api/v1/preheats", auth, body)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(b))
	var st preheat.Status
	require.NoError(t, json.Unmarshal(b, &st))
	require.Equal(t, preheat.StateRunning, st.State)
	require.NotEmpty(t, st.ID)
	require.Equal(t, "/api/v1/preheats/"+st.ID, resp.Header.Get("Location"))
	require.NotContains(t, string(b), secret)
	require.Len(t, fp.got, 1)
	require.Equal(t, preheat.Request{Type: "image", URL: "127.0.0.1:5000/library/app:1", Platform: "linux/arm64", Username: "u", Password: secret}, fp.got[0])

	resp, b = send(t, srv, http.MethodGet, "/api/v1/preheats", auth, "")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var list struct {
		Preheats []preheat.Status `json:"preheats"`
	}
	require.NoError(t, json.Unmarshal(b, &list))
	require.Len(t, list.Preheats, 1)
	require.Equal(t, st.ID, list.Preheats[0].ID)

	resp, b = send(t, srv, http.MethodGet, "/api/v1/preheats/"+st.ID, auth, "")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var got preheat.Status
	require.NoError(t, json.Unmarshal(b, &got))
	require.Equal(t, st.ID, got.ID)

	file := `{"type":"file","url":"http://origin/f","digest":"sha256:` + strings.Repeat("a", 64) + `","headers":{"X-Token":"t"}}`
	resp, b = send(t, srv, http.MethodPost, "/api/v1/preheats", auth, file)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(b))
	require.Equal(t, map[string]string{"X-Token": "t"}, fp.got[1].Headers)

	torrent := `{"type":"torrent","url":"magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=set","file":"set/b.iso"}`
	resp, b = send(t, srv, http.MethodPost, "/api/v1/preheats", auth, torrent)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(b))
	require.Equal(t, preheat.Request{Type: preheat.TypeTorrent, URL: "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=set", File: "set/b.iso"}, fp.got[2])

	tests := []struct {
		name, method, path, auth, body string
		status                         int
		code                           string
	}{
		{"no token", http.MethodPost, "/api/v1/preheats", "", body, 401, "UNAUTHORIZED"},
		{"wrong token", http.MethodPost, "/api/v1/preheats", "Bearer nope", body, 401, "UNAUTHORIZED"},
		{"get without token", http.MethodGet, "/api/v1/preheats/" + st.ID, "", "", 401, "UNAUTHORIZED"},
		{"malformed json", http.MethodPost, "/api/v1/preheats", auth, `{"type":"image","password":"` + secret, 400, "INVALID_ARGUMENT"},
		{"unknown field", http.MethodPost, "/api/v1/preheats", auth, `{"type":"image","pasword":"x"}`, 400, "INVALID_ARGUMENT"},
		{"wrong field type", http.MethodPost, "/api/v1/preheats", auth, `{"type":1}`, 400, "INVALID_ARGUMENT"},
		{"two values", http.MethodPost, "/api/v1/preheats", auth, `{"type":"image"} {}`, 400, "INVALID_ARGUMENT"},
		{"empty body", http.MethodPost, "/api/v1/preheats", auth, ``, 400, "INVALID_ARGUMENT"},
		{"too large", http.MethodPost, "/api/v1/preheats", auth, `{"url":"` + strings.Repeat("a", maxPreheatBody) + `"}`, 400, "INVALID_ARGUMENT"},
		{"invalid request", http.MethodPost, "/api/v1/preheats", auth, `{"url":"x"}`, 400, "INVALID_ARGUMENT"},
		{"unknown id", http.MethodGet, "/api/v1/preheats/0123456789abcdef0123456789abcdef", auth, "", 404, "NOT_FOUND"},
		{"traversal id", http.MethodGet, "/api/v1/preheats/..%2f..%2fetc", auth, "", 404, "NOT_FOUND"},
		{"delete is not a route", http.MethodDelete, "/api/v1/preheats", auth, "", 405, "METHOD_NOT_ALLOWED"},
		{"list without token", http.MethodGet, "/api/v1/preheats", "", "", 401, "UNAUTHORIZED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := send(t, srv, tt.method, tt.path, tt.auth, tt.body)
			require.Equal(t, tt.status, resp.StatusCode, string(b))
			var e errorBody
			require.NoError(t, json.Unmarshal(b, &e), string(b))
			require.Equal(t, tt.code, e.Code)
			require.NotContains(t, e.Message, secret)
		})
	}
	require.Len(t, fp.got, 3, "refused requests never reach the preheater")

	fp.mu.Lock()
	fp.closed = true
	fp.mu.Unlock()
	resp, b = send(t, srv, http.MethodPost, "/api/v1/preheats", auth, body)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, string(b))

	for _, e := range logs.All() {
		require.NotContains(t, fmt.Sprint(e.Message, e.Context), secret)
	}
}

func TestNoPreheatRoutesWithoutPreheater(t *testing.T) {
	t.Parallel()
	srv, _ := preheatServer(t, nil)
	resp, b := send(t, srv, http.MethodPost, "/api/v1/preheats", "Bearer "+token, `{"type":"image","url":"a:1"}`)
	require.Equal(t, http.StatusNotFound, resp.StatusCode, string(b))
}
