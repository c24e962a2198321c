package schedapi

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPeerValidate(t *testing.T) {
	t.Parallel()
	ok := Peer{ID: "dfget-1.a_b", Addr: "10.0.0.1:65002"}
	tests := []struct {
		name    string
		peer    Peer
		wantErr string
	}{
		{"ok", ok, ""},
		{"ipv6", Peer{ID: "p", Addr: "[::1]:1"}, ""},
		{"longest id", Peer{ID: strings.Repeat("p", MaxPeerIDLen), Addr: ok.Addr}, ""},
		{"empty id", Peer{Addr: ok.Addr}, "1 to 128"},
		{"long id", Peer{ID: strings.Repeat("p", MaxPeerIDLen+1), Addr: ok.Addr}, "1 to 128"},
		{"slash in id", Peer{ID: "a/b", Addr: ok.Addr}, "only [A-Za-z0-9._-]"},
		{"no port", Peer{ID: "p", Addr: "host"}, "host:port"},
		{"no host", Peer{ID: "p", Addr: ":1"}, "host:port"},
		{"port 0", Peer{ID: "p", Addr: "h:0"}, "bad port"},
		{"named port", Peer{ID: "p", Addr: "h:http"}, "bad port"},
		{"port too large", Peer{ID: "p", Addr: "h:65536"}, "bad port"},
		{"long addr", Peer{ID: "p", Addr: strings.Repeat("h", MaxPeerAddrLen) + ":1"}, "host:port"},
		{"negative rate", Peer{ID: "p", Addr: ok.Addr, DownloadRate: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.peer.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidPeer)
			require.ErrorContains(t, err, tt.wantErr)
			require.LessOrEqual(t, len(err.Error()), 400, "untrusted input is bounded")
		})
	}
}
