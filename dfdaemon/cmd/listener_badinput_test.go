package cmd

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/supernode/supernodetest"
)

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

// TestListenersRefuseOversizedHeaders: both dfdaemon listeners answer an
// oversized header block 431 (mirror, proxy and peer upload routes alike)
// and keep serving.
func TestListenersRefuseOversizedHeaders(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--node", startSupernode(t), "--registry", "http://127.0.0.1:1")
	big := "X-Big: " + strings.Repeat("b", 200<<10) + "\r\n"
	hex := strings.Repeat("ab", 32)
	member := "Authorization: Bearer " + supernodetest.ClusterToken + "\r\n"
	tests := []struct {
		name, addr, raw string
		status          int
	}{
		{"mirror", d.addr, "GET /v2/team/app/blobs/sha256:" + hex + " HTTP/1.1\r\nHost: m\r\n" + big + "\r\n", 431},
		{"proxy", d.addr, "GET http://127.0.0.1:1/blob HTTP/1.1\r\nHost: 127.0.0.1:1\r\n" + big + "\r\n", 431},
		{"connect", d.addr, "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n" + big + "\r\n", 431},
		{"peer upload", d.peerAddr, "GET /upload/v1/tasks/" + hex + " HTTP/1.1\r\nHost: p\r\nRange: bytes=0-1\r\n" + big + "\r\n", 431},
		{"peer upload traversal", d.peerAddr, "GET /upload/v1/tasks/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: p\r\n" + member + "\r\n", 400},
		{"peer upload overflowing range", d.peerAddr, "GET /upload/v1/tasks/" + hex + " HTTP/1.1\r\nHost: p\r\nRange: bytes=0-99999999999999999999\r\n" + member + "\r\n", 404},
		{"peer upload, no cluster token", d.peerAddr, "GET /upload/v1/tasks/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: p\r\n\r\n", 401},
		{"mirror still serves", d.addr, "GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.status, rawStatus(t, tt.addr, tt.raw))
		})
	}
}
