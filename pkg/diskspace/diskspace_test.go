package diskspace

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOf(t *testing.T) {
	t.Parallel()
	s, err := Of(t.TempDir())
	require.NoError(t, err)
	require.Positive(t, s.Total)
	require.GreaterOrEqual(t, s.Free, int64(0))
	require.LessOrEqual(t, s.Free, s.Total)
	require.Equal(t, s.Total-s.Free, s.Used())
	_, err = Of("/nonexistent/" + t.Name())
	require.ErrorIs(t, err, os.ErrNotExist)
}
