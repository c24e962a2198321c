package piece

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSizeFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		total int64
		want  int64
	}{
		{"unknown", -1, DefaultSize},
		{"empty", 0, DefaultSize},
		{"small", 1, DefaultSize},
		{"exactly 1000 pieces", 1000 * DefaultSize, DefaultSize},
		{"one byte over", 1000*DefaultSize + 1, 2 * DefaultSize},
		{"16 GiB", 16 << 30, 32 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := SizeFor(tt.total)
			require.Equal(t, tt.want, got)
			if tt.total > 0 {
				require.LessOrEqual(t, Count(tt.total, got), MaxCount)
			}
		})
	}
}

func TestBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		i             int
		total, size   int64
		wantOff, want int64
	}{
		{"first", 0, 10, 4, 0, 4},
		{"middle", 1, 10, 4, 4, 4},
		{"short last", 2, 10, 4, 8, 2},
		{"past end", 3, 10, 4, 12, 0},
		{"unknown total", 5, -1, 4, 20, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			off, n := Bounds(tt.i, tt.total, tt.size)
			require.Equal(t, tt.wantOff, off)
			require.Equal(t, tt.want, n)
		})
	}
	require.Equal(t, 3, Count(10, 4))
	require.Equal(t, 0, Count(0, 4))
	require.Equal(t, -1, Count(-1, 4))
	require.Equal(t, 2, Index(8, 4))
}

func TestSet(t *testing.T) {
	t.Parallel()
	var s Set
	require.False(t, s.Has(0))
	for _, i := range []int{0, 3, 64, 999} {
		s.Add(i)
	}
	require.Equal(t, 4, s.Len())
	require.True(t, s.Has(64))
	require.False(t, s.Has(65))
	require.False(t, s.Has(-1))
	require.Equal(t, []int{0, 3, 64, 999}, s.Indices())
	s.Remove(3)
	require.Equal(t, []int{0, 64, 999}, s.Indices())

	c := s.Clone()
	c.Add(1)
	require.False(t, s.Has(1))

	b, err := json.Marshal(&s)
	require.NoError(t, err)
	var back Set
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, s.Indices(), back.Indices())

	full := NewSet(5)
	for i := range 5 {
		full.Add(i)
	}
	require.True(t, full.HasAll(5))
	require.False(t, full.HasAll(6))
	require.True(t, full.HasRange(1, 4))

	require.Error(t, json.Unmarshal([]byte(`"!!"`), &back))
	require.Error(t, json.Unmarshal([]byte(`12`), &back))
}

func TestValidateDigest(t *testing.T) {
	t.Parallel()
	require.NoError(t, ValidateDigest(Digest([]byte("x"))))
	require.Error(t, ValidateDigest("md5:0cc175b9c0f1b6a831c399e269772661"))
	require.Error(t, ValidateDigest("sha256:zz"))
	require.Error(t, ValidateDigest("sha256:../../etc/passwd"))
}
