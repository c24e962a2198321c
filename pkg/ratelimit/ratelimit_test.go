package ratelimit

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
	"gopkg.in/yaml.v3"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"100", 100, true},
		{"20M", 20 << 20, true},
		{"20m", 20 << 20, true},
		{"20MB", 20 << 20, true},
		{"20MiB", 20 << 20, true},
		{"512K", 512 << 10, true},
		{"512KB/s", 512 << 10, true},
		{"1.5G", 3 << 29, true},
		{"2g", 2 << 30, true},
		{"64B", 64, true},
		{" 5 K ", 5 << 10, true},
		{"512 MiB/s", 512 << 20, true},
		{"1T", 1 << 40, true},
		{"2000T", 0, false},
		{"2MiB/S", 2 << 20, true},
		{"/s", 0, false},
		{"", 0, false},
		{"M", 0, false},
		{"20X", 0, false},
		{"20iB", 0, false},
		{"-5M", 0, false},
		{"0", 0, false},
		{"NaN", 0, false},
		{"1e3", 1000, true},
		{"0x10", 0, false},
		{"0.5", 0, false},
		{"2000000G", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tt.in)
			if !tt.ok {
				require.Error(t, err)
				require.Zero(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestRate(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Rate{"0": 0, " 0 ": 0, "16M": 16 << 20, "1536K": 1536 << 10, "100": 100} {
		got, err := ParseRate(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		// String writes what ParseRate reads back.
		back, err := ParseRate(got.String())
		require.NoError(t, err)
		require.Equal(t, got, back)
	}
	require.Equal(t, "16M", Rate(16<<20).String())
	require.Equal(t, "1536K", Rate(1536<<10).String())
	require.Equal(t, "0", Rate(0).String())
	_, err := ParseRate("-1")
	require.Error(t, err)
	var r Rate
	require.Error(t, r.Set("fast"))
	require.NoError(t, r.Set("2G"))
	require.Equal(t, Rate(2<<30), r)
}

func TestRateYAML(t *testing.T) {
	t.Parallel()
	var c struct {
		Download Rate `yaml:"download"`
		Upload   Rate `yaml:"upload"`
		Other    Rate `yaml:"other"`
	}
	require.NoError(t, yaml.Unmarshal([]byte("download: 16MiB/s\nupload: 1048576\nother: 0\n"), &c))
	require.Equal(t, Rate(16<<20), c.Download)
	require.Equal(t, Rate(1<<20), c.Upload)
	require.Equal(t, Rate(0), c.Other)

	err := yaml.Unmarshal([]byte("download: 16Q\n"), &c)
	require.ErrorContains(t, err, "line 1")
	err = yaml.Unmarshal([]byte("upload: [1]\n"), &c)
	require.ErrorContains(t, err, "must be a number")
	out, err := yaml.Marshal(struct {
		R Rate `yaml:"r"`
	}{8 << 20})
	require.NoError(t, err)
	require.Equal(t, "r: 8M", strings.TrimSpace(string(out)))
}

func TestNewLimiter(t *testing.T) {
	t.Parallel()
	require.Nil(t, NewLimiter(0))
	require.Nil(t, NewLimiter(-1))
	require.Nil(t, Rate(0).Limiter())
	tests := []struct {
		bps   int64
		burst int
	}{
		{100, 100},           // never more than a second's worth
		{1 << 20, 104857},    // a tenth of a second
		{64 << 10, 16 << 10}, // at least 16 KiB
		{1 << 30, 4 << 20},   // at most 4 MiB
		{16 << 20, 1677721},  // 16 MiB/s
		{int64(Rate(8 << 20)), 838860},
	}
	for _, tt := range tests {
		l := NewLimiter(tt.bps)
		require.Equal(t, rate.Limit(tt.bps), l.Limit(), tt.bps)
		require.Equal(t, tt.burst, l.Burst(), tt.bps)
	}
}
