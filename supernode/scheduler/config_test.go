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
	on := true
	require.Equal(t, Config{
		Policy:            "rarest-first",
		PeerUploadSlots:   4,
		CDNUploadSlots:    16,
		CDNPieceFanout:    DefaultCDNPieceFanout,
		PeerTTL:           30 * time.Second,
		AssignmentTimeout: 60 * time.Second,
		StrikeLimit:       2,
		FailedTaskTTL:     10 * time.Second,
		MinPieceRate:      1 << 20,
		AssignmentGrace:   5 * time.Second,
		CDNStartGrace:     2 * time.Second,
		MaxOutstanding:    16,
		MaxTasks:          10000,
		MaxTasksPerPeer:   5000,
		IdleTaskTTL:       10 * time.Minute,
		CutThrough:        &on,
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
		{name: "bad bounds", mutate: func(c *Config) {
			c.MaxOutstanding, c.MaxTasks, c.MaxTasksPerPeer, c.MinPieceRate = schedapi.MaxAssignments+1, -1, -1, -1
			c.AssignmentGrace, c.CDNStartGrace, c.IdleTaskTTL = -1, -1, -1
		}, wantErr: []string{"maxOutstanding", "maxTasks ", "maxTasksPerPeer", "minPieceRate", "assignmentGrace", "cdnStartGrace", "idleTaskTTL"}},
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
	require.Equal(t, 500*time.Millisecond, Config{}.ApplyDefaults().sweepInterval(), "a quarter of cdnStartGrace")
	require.Equal(t, time.Second, Config{CDNStartGrace: time.Minute, AssignmentGrace: time.Minute}.ApplyDefaults().sweepInterval())
	require.Equal(t, 250*time.Millisecond, Config{PeerTTL: time.Second}.ApplyDefaults().sweepInterval())
	require.Equal(t, 10*time.Millisecond, Config{AssignmentTimeout: time.Millisecond}.ApplyDefaults().sweepInterval())
}

func TestTransferTimeout(t *testing.T) {
	t.Parallel()
	c := Config{}.ApplyDefaults()
	tests := []struct {
		name string
		n    int64
		rate int64
		want time.Duration
	}{
		{name: "4 MiB at 1 MiB/s plus grace", n: 4 << 20, want: 9 * time.Second},
		{name: "empty piece: the grace", n: 0, want: 5 * time.Second},
		{name: "huge piece: capped by assignmentTimeout", n: 1 << 30, want: time.Minute},
		{name: "fast requester: the floor rate still applies", n: 4 << 20, rate: 1 << 30, want: 9 * time.Second},
		{name: "slow requester: its rate over maxOutstanding", n: 1 << 20, rate: 8 << 20, want: 7 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, c.transferTimeout(tt.n, tt.rate))
		})
	}
}
