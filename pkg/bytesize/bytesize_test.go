package bytesize_test

import (
	"flag"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bytesize.Size
		err  bool
	}{
		{"1000", 1000, false},
		{"10GiB", 10 << 30, false},
		{"10G", 10 << 30, false},
		{"100G", 100 << 30, false},
		{"64GiB", 64 << 30, false},
		{"512 MiB", 512 << 20, false},
		{"1.5KiB", 1536, false},
		{"20gib", 20 << 30, false},
		{"7B", 7, false},
		{"", 0, true},
		{"-1", 0, true},
		{"ten", 0, true},
		{"99999999999TiB", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := bytesize.Parse(tt.in)
			if tt.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			txt, err := got.MarshalText()
			require.NoError(t, err)
			var back bytesize.Size
			require.NoError(t, back.UnmarshalText(txt))
			require.Equal(t, got, back)
		})
	}
	require.Equal(t, "20GiB", bytesize.Size(20<<30).String())
	for n, want := range map[bytesize.Size]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 20 << 20: "20.0 MiB", 3 << 40: "3.0 TiB", 2048 << 40: "2.0 PiB"} {
		require.Equal(t, want, n.Approx(), int64(n))
	}
	require.Equal(t, "1001", bytesize.Size(1001).String())
}

func TestFlagAndYAML(t *testing.T) {
	t.Parallel()
	var s bytesize.Size
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(&s, "quota", "size")
	require.NoError(t, fs.Parse([]string{"--quota", "100G"}))
	require.Equal(t, bytesize.Size(100<<30), s)
	require.Error(t, fs.Parse([]string{"--quota", "lots"}))

	var y struct {
		Quota bytesize.Size `yaml:"quota"`
	}
	require.NoError(t, yaml.Unmarshal([]byte("quota: 64GiB\n"), &y))
	require.Equal(t, bytesize.Size(64<<30), y.Quota)
	require.NoError(t, yaml.Unmarshal([]byte("quota: 1073741824\n"), &y))
	require.Equal(t, bytesize.Size(1<<30), y.Quota)
	err := yaml.Unmarshal([]byte("\nquota: 5x\n"), &y)
	require.ErrorContains(t, err, "line 2")
}
