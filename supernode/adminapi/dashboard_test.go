package adminapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// fakeDashboard reads the fixture's scheduler and a fixed CDN usage.
type fakeDashboard struct{ sched *scheduler.Scheduler }

func (f fakeDashboard) TaskDetail(ctx context.Context, id taskid.ID) (scheduler.TaskDetail, error) {
	return f.sched.TaskDetail(ctx, id)
}

func (f fakeDashboard) CDNSlots(ctx context.Context) (scheduler.CDNSlots, error) {
	return f.sched.CDNSlots(ctx)
}

func (fakeDashboard) CDNUsage() cdn.Usage {
	return cdn.Usage{Used: 3 << 20, Quota: 1 << 30, Fetches: 1}
}

// newDashFixture serves the admin API with the dashboard.
func newDashFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	srv := httptest.NewServer(New(f.sched, f.cdn, token, WithDashboard(fakeDashboard{f.sched})))
	t.Cleanup(srv.Close)
	f.srv = srv
	return f
}

// post sends a form POST as a same-origin browser would (Origin and
// Sec-Fetch-Site), with the cookies given.
func (f *fixture) post(t *testing.T, path string, form url.Values, origin string, cookies ...*http.Cookie) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func (f *fixture) get(t *testing.T, path string, cookies ...*http.Cookie) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, f.srv.URL+path, nil)
	require.NoError(t, err)
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func sessionOf(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			return c
		}
	}
	return nil
}

func (f *fixture) login(t *testing.T) *http.Cookie {
	t.Helper()
	resp := f.post(t, "/dashboard/login", url.Values{"token": {token}}, f.srv.URL)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	c := sessionOf(t, resp)
	require.NotNil(t, c)
	return c
}

func TestDashboardLogin(t *testing.T) {
	t.Parallel()
	f := newDashFixture(t)

	for _, wrong := range []string{"", "nope", token + "x", token[:3]} {
		resp := f.post(t, "/dashboard/login", url.Values{"token": {wrong}}, f.srv.URL)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "token %q", wrong)
		require.Nil(t, sessionOf(t, resp), "token %q", wrong)
	}

	resp := f.post(t, "/dashboard/login", url.Values{"token": {token}}, f.srv.URL)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	raw := resp.Header.Get("Set-Cookie")
	for _, attr := range []string{"HttpOnly", "SameSite=Strict", "Path=/dashboard/", "Max-Age=43200"} {
		require.Contains(t, raw, attr)
	}
	c := sessionOf(t, resp)
	require.NotNil(t, c)
	require.NotContains(t, c.Value, token)
	require.Len(t, c.Value, 64)
}

func TestDashboardData(t *testing.T) {
	t.Parallel()
	f := newDashFixture(t)

	for _, path := range []string{"/dashboard/api/overview", "/dashboard/api/tasks/" + f.task} {
		resp, _ := f.get(t, path)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		resp, _ = f.get(t, path, &http.Cookie{Name: sessionCookie, Value: strings.Repeat("a", 64)})
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		// The bearer token is not a session.
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		r, err := f.srv.Client().Do(req)
		require.NoError(t, err)
		r.Body.Close()
		require.Equal(t, http.StatusUnauthorized, r.StatusCode, path)
	}

	c := f.login(t)
	resp, b := f.get(t, "/dashboard/api/overview", c)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	var ov Overview
	require.NoError(t, json.Unmarshal(b, &ov))
	require.Equal(t, 1, ov.TotalTasks)
	require.Len(t, ov.Tasks, 1)
	require.Equal(t, f.task, ov.Tasks[0].TaskID)
	require.Equal(t, 1, ov.Tasks[0].Peers)
	require.Equal(t, int64(1234), ov.Tasks[0].BytesFromSource)
	require.Nil(t, ov.Tasks[0].Offload, "nothing delivered yet")
	require.Equal(t, int64(1<<30), ov.CDN.Quota)
	require.Equal(t, scheduler.DefaultCDNUploadSlots, ov.CDN.SlotsTotal)
	require.Equal(t, 1, ov.Peers)

	resp, b = f.get(t, "/dashboard/api/tasks/"+f.task, c)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var v TaskView
	require.NoError(t, json.Unmarshal(b, &v))
	require.Equal(t, "supernode", v.CDNID)
	require.Equal(t, []byte{1}, v.CDNHeld, "piece 0 published")
	require.Len(t, v.Members, 1)
	require.Equal(t, "peer-1", v.Members[0].ID)
	require.Equal(t, int64(8<<20), v.Members[0].DownloadRate)

	resp, _ = f.get(t, "/dashboard/api/tasks/sha256:"+strings.Repeat("0", 64), c)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	resp, b = f.get(t, "/dashboard/session", c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.JSONEq(t, `{"authenticated":true}`, string(b))
}

func TestDashboardLogout(t *testing.T) {
	t.Parallel()
	f := newDashFixture(t)
	c := f.login(t)
	resp, _ := f.get(t, "/dashboard/api/overview", c)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	resp = f.post(t, "/dashboard/logout", nil, f.srv.URL, c)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	gone := sessionOf(t, resp)
	require.NotNil(t, gone)
	require.Empty(t, gone.Value)
	require.Negative(t, gone.MaxAge)

	resp, _ = f.get(t, "/dashboard/api/overview", c)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the old cookie no longer works")
	_, b := f.get(t, "/dashboard/session", c)
	require.JSONEq(t, `{"authenticated":false}`, string(b))
}

func TestDashboardCrossOrigin(t *testing.T) {
	t.Parallel()
	f := newDashFixture(t)
	c := f.login(t)

	resp := f.post(t, "/dashboard/login", url.Values{"token": {token}}, "https://evil.example")
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Nil(t, sessionOf(t, resp))

	// Sec-Fetch-Site cross-site is refused whatever the Origin.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/dashboard/logout", nil)
	require.NoError(t, err)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.AddCookie(c)
	r, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	r.Body.Close()
	require.Equal(t, http.StatusForbidden, r.StatusCode)

	resp = f.post(t, "/dashboard/logout", nil, "http://evil.example", c)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	got, _ := f.get(t, "/dashboard/api/overview", c)
	require.Equal(t, http.StatusOK, got.StatusCode, "the refused logouts did not end the session")
}

func TestDashboardAssets(t *testing.T) {
	t.Parallel()
	f := newDashFixture(t)
	for path, ct := range map[string]string{
		"/dashboard/":        "text/html; charset=utf-8",
		"/dashboard/app.js":  "text/javascript; charset=utf-8",
		"/dashboard/app.css": "text/css; charset=utf-8",
	} {
		resp, b := f.get(t, path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, ct, resp.Header.Get("Content-Type"), path)
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)
		require.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'", path)
		require.NotEmpty(t, b, path)
	}
	resp, _ := f.get(t, "/dashboard/nothing")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	entries, err := dashboardFS.ReadDir("dashboard")
	require.NoError(t, err)
	require.Len(t, entries, 3)
	for _, e := range entries {
		b, err := dashboardFS.ReadFile("dashboard/" + e.Name())
		require.NoError(t, err)
		s := strings.ToLower(string(b))
		require.NotContains(t, s, "http://", e.Name())
		require.NotContains(t, s, "https://", e.Name())
		require.NotContains(t, s, "localstorage", e.Name())
		require.NotContains(t, s, "sessionstorage", e.Name())
	}
}

// The admin API keeps answering 401 before 404 outside the dashboard.
func TestDashboardKeepsAdminAuth(t *testing.T) {
	t.Parallel()
	f := newDashFixture(t)
	for _, path := range []string{"/api/v1/tasks", "/api/v1/nothing", "/elsewhere"} {
		resp, _ := f.get(t, path)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
	}
	resp, _ := f.do(t, http.MethodGet, "/api/v1/tasks", "Bearer "+token)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// Without WithDashboard there is no dashboard.
	plain := newFixture(t)
	resp, _ = plain.get(t, "/dashboard/")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

func TestSessionsBoundedAndExpire(t *testing.T) {
	t.Parallel()
	s := newSessions()
	now := time.Unix(1_700_000_000, 0)
	s.now = func() time.Time { return now }
	first := s.create()
	for range maxSessions + 10 {
		now = now.Add(time.Second)
		s.create()
	}
	require.Len(t, s.byID, maxSessions)
	require.False(t, s.valid(first), "the oldest session went")
	last := s.create()
	require.True(t, s.valid(last))
	now = now.Add(sessionTTL)
	require.False(t, s.valid(last), "expired")
}

// The dashboard lists the preheats created through the admin API, newest
// first, when the Preheater cannot list them itself.
func TestDashboardPreheats(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	p := &fakePreheater{byID: map[string]preheat.Status{}}
	srv := httptest.NewServer(New(f.sched, f.cdn, token, WithPreheater(p), WithDashboard(fakeDashboard{f.sched})))
	t.Cleanup(srv.Close)
	f.srv = srv
	for _, img := range []string{"registry.example/a:1", "registry.example/b:2"} {
		resp, b := send(t, srv, http.MethodPost, "/api/v1/preheats", "Bearer "+token, `{"type":"image","url":"`+img+`"}`)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, string(b))
	}
	c := f.login(t)
	resp, b := f.get(t, "/dashboard/api/overview", c)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var ov Overview
	require.NoError(t, json.Unmarshal(b, &ov))
	require.Len(t, ov.Preheats, 2)
	require.Equal(t, "registry.example/b:2", ov.Preheats[0].Image)
	require.Equal(t, "registry.example/a:1", ov.Preheats[1].Image)
	require.NotEmpty(t, ov.PreheatsNote)
}

func TestRecentPreheatsBounded(t *testing.T) {
	t.Parallel()
	var r recentPreheats
	for i := range maxRecentPreheats + 5 {
		r.add(string(rune('a' + i)))
	}
	ids := r.list()
	require.Len(t, ids, maxRecentPreheats)
	require.Equal(t, string(rune('a'+5)), ids[0])
}
