package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// outsider sends a request as a host that can reach the cluster but does
// not hold its token (auth "") or holds a wrong one.
func outsider(t *testing.T, method, url, auth string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, r)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Range", "bytes=0-1023")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// The cluster's boundary, as an attacker on the same network meets it
// (issue findings 2, 3 and 8): without the cluster token the supernode
// registers nothing and fetches nothing (no SSRF), neither the supernode's
// CDN nor a member's upload server serves a byte of content they hold (a
// digest is not a credential), and a registration flood leaves no task and
// no file behind. Members, meanwhile, download as before.
func TestClusterBoundary(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sn := supernodetest.Start(t, "e2e-admin-token", "--log-level", "warn")
	s := &supernode{addr: sn.Addr, token: sn.Token}
	o := newOrigin(t, 6<<20, 0)
	internal := newOrigin(t, 1<<10, 0) // an internal service an attacker wants read

	// A member downloads the file; it now sits in the CDN. (A dfdaemon's
	// upload server refusing outsiders is dfdaemon/cmd's
	// TestRunMirrorProxyHealthMetrics.)
	out := filepath.Join(t.TempDir(), "member.bin")
	member := startDfget(t, t.Context(), o.url("private.bin"), out, "--node", sn.Addr, "--notbs",
		"--digest", "sha256:"+o.sum)
	require.NoError(t, member.wait(t, time.Minute), member.stderr.String())
	require.Equal(t, o.sum, fileSHA256(t, out))
	originGETs := o.requests.Load()
	tasksBefore := len(s.tasks(t))

	for _, auth := range []string{"", "Bearer not-the-cluster-token-0123456789", "Bearer e2e-admin-token"} {
		// SSRF: register any URL with any header.
		status, b := outsider(t, http.MethodPost, "http://"+sn.Addr+schedapi.RegisterPath(), auth, schedapi.RegisterRequest{
			Peer: schedapi.Peer{ID: "attacker", Addr: "127.0.0.1:9"}, URL: internal.url("metadata"),
			Header: http.Header{"X-Forward": {"1"}},
		})
		require.Equal(t, http.StatusUnauthorized, status, string(b))
		// Read the private content from the CDN knowing its digest.
		status, b = outsider(t, http.MethodGet, "http://"+sn.Addr+upload.Path(taskid.ID("sha256:"+o.sum)), auth, nil)
		require.Equal(t, http.StatusUnauthorized, status, auth)
		require.False(t, bytes.Contains(b, o.data[:16]), "no content byte in the answer")
	}
	// A flood of registrations, none with the token.
	for i := range 300 {
		status, _ := outsider(t, http.MethodPost, "http://"+sn.Addr+schedapi.RegisterPath(), "", schedapi.RegisterRequest{
			Peer: schedapi.Peer{ID: fmt.Sprintf("flood-%d", i), Addr: "127.0.0.1:9"}, URL: o.url(fmt.Sprintf("flood-%d", i)),
		})
		require.Equal(t, http.StatusUnauthorized, status)
	}
	require.Zero(t, internal.requests.Load(), "the supernode never fetched what an outsider named")
	require.Equal(t, originGETs, o.requests.Load(), "no source fetch for the flood")
	require.Len(t, s.tasks(t), tasksBefore, "no task registered by an outsider")
	var peers struct {
		Peers []struct {
			ID string `json:"id"`
		} `json:"peers"`
	}
	require.Equal(t, http.StatusOK, s.adminGet(t, "/api/v1/peers", &peers))
	for _, p := range peers.Peers {
		require.False(t, strings.HasPrefix(p.ID, "flood-") || p.ID == "attacker", "outsider %s is known", p.ID)
	}
	var files []string
	require.NoError(t, filepath.WalkDir(sn.DataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "flood") {
			files = append(files, p)
		}
		return err
	}))
	require.Empty(t, files)

	// A second member still downloads, from the first one and the CDN.
	out2 := filepath.Join(t.TempDir(), "member2.bin")
	second := startDfget(t, t.Context(), o.url("private.bin"), out2, "--node", sn.Addr, "--notbs", "--digest", "sha256:"+o.sum)
	require.NoError(t, second.wait(t, time.Minute), second.stderr.String())
	require.Equal(t, o.sum, fileSHA256(t, out2))
	require.Equal(t, originGETs, o.requests.Load(), "the origin sent the file once")
}
