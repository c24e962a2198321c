package adminapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/supernode/adminapi"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// The real supernode serves the dashboard on its listener, next to the
// admin API, reading the real scheduler and CDN.
func TestSupernodeServesDashboard(t *testing.T) {
	sn := supernodetest.Start(t, "mount-test-admin-token")
	base := "http://" + sn.Addr
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	get := func(path string, cookies ...*http.Cookie) (*http.Response, []byte) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+path, nil)
		require.NoError(t, err)
		for _, c := range cookies {
			req.AddCookie(c)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}

	resp, b := get("/dashboard/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, string(b), "app.js")
	resp, _ = get("/dashboard/api/overview")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = get("/api/v1/tasks")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the admin API still wants its bearer token")

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/dashboard/login",
		strings.NewReader(url.Values{"token": {sn.Token}}.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	login, err := hc.Do(req)
	require.NoError(t, err)
	login.Body.Close()
	require.Equal(t, http.StatusNoContent, login.StatusCode)
	require.Len(t, login.Cookies(), 1)

	resp, b = get("/dashboard/api/overview", login.Cookies()[0])
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var ov adminapi.Overview
	require.NoError(t, json.Unmarshal(b, &ov))
	require.Positive(t, ov.CDN.SlotsTotal)
	require.Empty(t, ov.Tasks)
}
