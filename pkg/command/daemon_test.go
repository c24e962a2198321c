package command

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

func TestDaemon(t *testing.T) {
	t.Parallel()
	d := NewDaemon(zap.NewNop())
	d.Mux.Handle("GET /x", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "x") }))
	srv := d.Server(nil)
	require.Equal(t, DefaultMaxHeaderBytes, srv.MaxHeaderBytes)
	require.NotZero(t, srv.ReadHeaderTimeout)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- d.Run(ctx, srv, ln, func(ctx context.Context) error {
			close(ran)
			<-ctx.Done()
			return nil
		})
	}()
	<-ran
	get := func(path string) string {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(b)
	}
	require.Equal(t, "ok\n", get("/healthz"))
	require.Contains(t, get("/metrics"), "go_goroutines")
	require.Equal(t, "x", get("/x"))
	cancel()
	require.NoError(t, <-done)
}

func TestDaemonComponentFails(t *testing.T) {
	t.Parallel()
	d := NewDaemon(zap.NewNop())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	boom := errors.New("boom")
	err = d.Run(t.Context(), d.Server(nil), ln, func(context.Context) error { return boom })
	require.ErrorIs(t, err, boom)
}

func TestCheckHostPort(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr    string
		listen  bool
		wantErr string
	}{
		{":8002", true, ""},
		{"127.0.0.1:0", true, ""},
		{"[::1]:65535", false, ""},
		{"host:1", false, ""},
		{":8002", false, "no host"},
		{"host:0", false, "bad port"},
		{"host:65536", true, "bad port"},
		{"host:http", true, "bad port"},
		{"host", true, "must be host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			err := CheckHostPort(tt.addr, tt.listen)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.True(t, strings.Contains(err.Error(), tt.wantErr), err.Error())
		})
	}
}
