package peer

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNewID(t *testing.T) {
	t.Parallel()
	a, b := NewID("dfget"), NewID("dfget")
	require.NotEqual(t, a, b)
	require.Regexp(t, regexp.MustCompile(`^dfget-[A-Za-z0-9._-]+-[0-9a-f]{12}$`), a)
	require.LessOrEqual(t, len(a), 128)
}

func TestAdvertiseIP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, explicit, listen, node, want string
	}{
		{"explicit wins", "10.1.2.3", "127.0.0.2:0", "127.0.0.1:8002", "10.1.2.3"},
		{"listen host", "", "127.0.0.2:65002", "127.0.0.1:8002", "127.0.0.2"},
		{"towards the node", "", ":65002", "127.0.0.1:8002", "127.0.0.1"},
		{"unspecified listen", "", "0.0.0.0:65002", "127.0.0.1:8002", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := AdvertiseIP(tt.explicit, tt.listen, tt.node)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
	_, err := AdvertiseIP("", ":0", "not an address")
	require.Error(t, err)
}
