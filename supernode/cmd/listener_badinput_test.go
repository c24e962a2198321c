package cmd

import (
	"bufio"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rawStatus writes raw to addr and returns the status of the answer.
func rawStatus(t *testing.T, addr, raw string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Write([]byte(raw))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode
}

func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	}))
	sort.Strings(out)
	return out
}

// TestListenerRefusesBadInput: the supernode's one listener (peer API,
// upload, admin API) answers oversized headers 431, oversized bodies and
// paths that try to leave the data directory with the exact 4xx, and none
// of it touches the directory beside the data dir.
func TestListenerRefusesBadInput(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	sn := start(t, []string{"--data-dir", filepath.Join(parent, "data"), "--admin-token", "tok", "--log-level", "error"})
	addr := strings.TrimPrefix(sn.base, "http://")
	before := listTree(t, parent)

	big := "X-Big: " + strings.Repeat("b", 100<<10) + "\r\n"
	auth := "Authorization: Bearer tok\r\n"
	member := "Authorization: Bearer " + sn.cluster + "\r\n"
	register := `{"peer":{"id":"p","addr":"127.0.0.1:1"},"url":"http://127.0.0.1:1/` + strings.Repeat("a", 1<<20) + `"}`
	preheat := `{"type":"file","url":"http://127.0.0.1:1/` + strings.Repeat("a", 1<<20) + `"}`
	hex := strings.Repeat("ab", 32)
	tests := []struct {
		name, raw string
		status    int
	}{
		{"oversized header on healthz", "GET /healthz HTTP/1.1\r\nHost: s\r\n" + big + "\r\n", 431},
		{"oversized header on the peer api", "POST /api/peer/v1/register HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n" + big + "\r\n{}", 431},
		{"oversized header on the admin api", "GET /api/v1/tasks HTTP/1.1\r\nHost: s\r\n" + auth + big + "\r\n", 431},
		{"oversized header on upload", "GET /upload/v1/tasks/" + hex + " HTTP/1.1\r\nHost: s\r\n" + big + "\r\n", 431},
		{"oversized register body", post("/api/peer/v1/register", member, register), 413},
		{"oversized register body, no cluster token", post("/api/peer/v1/register", "", register), 401},
		{"oversized preheat body", post("/api/v1/preheats", auth, preheat), 400},
		{"file url register", post("/api/peer/v1/register", member, `{"peer":{"id":"p","addr":"127.0.0.1:1"},"url":"file:///x"}`), 400},
		{"upload traversal", "GET /upload/v1/tasks/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: s\r\nRange: bytes=0-1\r\n" + member + "\r\n", 400},
		{"upload traversal, no cluster token", "GET /upload/v1/tasks/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: s\r\nRange: bytes=0-1\r\n\r\n", 401},
		{"upload absolute path", "GET /upload/v1/tasks/%2Fetc%2Fpasswd HTTP/1.1\r\nHost: s\r\n" + member + "\r\n", 400},
		{"upload nul", "GET /upload/v1/tasks/" + hex[:63] + "%00 HTTP/1.1\r\nHost: s\r\n" + member + "\r\n", 400},
		{"upload unknown task overflowing range", "GET /upload/v1/tasks/" + hex + " HTTP/1.1\r\nHost: s\r\nRange: bytes=0-99999999999999999999\r\n" + member + "\r\n", 404},
		// %2F is a "/": no admin route has a task ID with slashes.
		{"admin get traversal", "GET /api/v1/tasks/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: s\r\n" + auth + "\r\n", 404},
		{"admin delete traversal", "DELETE /api/v1/tasks/..%2F..%2Fdata HTTP/1.1\r\nHost: s\r\n" + auth + "\r\n", 404},
		{"admin delete absolute", "DELETE /api/v1/tasks/%2Ftmp HTTP/1.1\r\nHost: s\r\n" + auth + "\r\n", 404},
		{"admin delete dotdot is redirected to its clean path", "DELETE /api/v1/tasks/.. HTTP/1.1\r\nHost: s\r\n" + auth + "\r\n", 307},
		{"admin delete nul", "DELETE /api/v1/tasks/" + hex[:63] + "%00 HTTP/1.1\r\nHost: s\r\n" + auth + "\r\n", 400},
		{"admin delete unknown", "DELETE /api/v1/tasks/" + hex + " HTTP/1.1\r\nHost: s\r\n" + auth + "\r\n", 404},
		{"pieces traversal", "GET /api/peer/v1/tasks/..%2F..%2Fetc/peers/p/pieces HTTP/1.1\r\nHost: s\r\n" + member + "\r\n", 400},
		{"pieces piece count overflow", "GET /api/peer/v1/tasks/" + hex + "/peers/p/pieces?max=99999999999999999999 HTTP/1.1\r\nHost: s\r\n" + member + "\r\n", 400},
		{"report piece overflow", post("/api/peer/v1/tasks/"+hex+"/peers/p/reports", member, `{"results":[{"piece":99999999999999999999,"from":"q"}]}`), 400},
		{"report negative piece", post("/api/peer/v1/tasks/"+hex+"/peers/p/reports", member, `{"results":[{"piece":-1,"from":"q"}]}`), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.status, rawStatus(t, addr, tt.raw))
		})
	}
	// The listener still serves after all of it.
	status, _ := sn.do(t, http.MethodGet, "/healthz", "", nil)
	require.Equal(t, http.StatusOK, status)
	after := listTree(t, parent)
	for _, p := range after {
		require.True(t, p == parent || strings.HasPrefix(p, filepath.Join(parent, "data")), "%s created beside the data dir", p)
	}
	for _, p := range before {
		require.Contains(t, after, p, "removed by bad input")
	}
}

// post is a raw POST of body that closes the connection after the answer.
func post(path, header, body string) string {
	return "POST " + path + " HTTP/1.1\r\nHost: s\r\nConnection: close\r\n" + header +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}
