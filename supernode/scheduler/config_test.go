package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{}.ApplyDefaults()
	require.Equal(t, Config{
		Policy:            "rarest-first",
		PeerUploadSlots:   4,
		CDNUploadSlots:    16,
		CDNPieceFanout:    DefaultCDNPieceFanout,
		PeerTTL:           30 * time.Second,
		AssignmentTimeout: 60 * time.Second,
		StrikeLimit:       2,
		FailedTaskTTL:     10 * time.Second,
	}, c)
	require.NoError(t, c.Validate())

	set := Config{PeerUploadSlots: 9, StrikeLimit: 5}.ApplyDefaults()
	require.Equal(t, 9, set.PeerUploadSlots)
	require.Equal(t, 5, set.StrikeLimit)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr []string
	}{
		{name: "defaults"},
		{name: "unknown policy", mutate: func(c *Config) { c.Policy = "random" }, wantErr: []string{`policy "random"`}},
		{name: "no peer slots", mutate: func(c *Config) { c.PeerUploadSlots = -1 }, wantErr: []string{"peerUploadSlots"}},
		{name: "no CDN fanout", mutate: func(c *Config) { c.CDNPieceFanout = -2 }, wantErr: []string{"cdnPieceFanout"}},
		{name: "no cdn slots", mutate: func(c *Config) { c.CDNUploadSlots = -2 }, wantErr: []string{"cdnUploadSlots"}},
		{name: "negative durations", mutate: func(c *Config) {
			c.PeerTTL, c.AssignmentTimeout, c.FailedTaskTTL = -1, -time.Second, -time.Minute
		}, wantErr: []string{"peerTTL", "assignmentTimeout", "failedTaskTTL"}},
		{name: "all at once", mutate: func(c *Config) {
			c.Policy, c.StrikeLimit, c.PeerUploadSlots = "x", -1, -1
		}, wantErr: []string{`policy "x"`, "strikeLimit", "peerUploadSlots"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Config{}.ApplyDefaults()
			if tt.mutate != nil {
				tt.mutate(&c)
			}
			err := c.Validate()
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			for _, w := range tt.wantErr {
				require.ErrorContains(t, err, w)
			}
			_, err = New(c, cdnPeer)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
}

func TestNewRejectsBadCDN(t *testing.T) {
	t.Parallel()
	for _, p := range []schedapi.Peer{
		{ID: "", Addr: "127.0.0.1:1"},
		{ID: "cdn", Addr: ""},
		{ID: "cdn", Addr: "no-port"},
		{ID: "bad/id", Addr: "127.0.0.1:1"},
	} {
		_, err := New(Config{}, p)
		require.ErrorIs(t, err, ErrInvalid, "cdn %+v", p)
	}
	_, err := New(Config{}, cdnPeer)
	require.NoError(t, err)
}

func TestSweepInterval(t *testing.T) {
	t.Parallel()
	require.Equal(t, time.Second, Config{}.ApplyDefaults().sweepInterval())
	require.Equal(t, 250*time.Millisecond, Config{PeerTTL: time.Second}.ApplyDefaults().sweepInterval())
	require.Equal(t, 10*time.Millisecond, Config{AssignmentTimeout: time.Millisecond}.ApplyDefaults().sweepInterval())
}
