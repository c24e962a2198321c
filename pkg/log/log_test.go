package log

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

func TestNew(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l, err := New(Config{Level: "warn", Format: "json"}, &buf)
	require.NoError(t, err)
	l.Info("hidden")
	l.Warn("shown", zap.String("task", "t1"))
	var line map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &line))
	require.Equal(t, "shown", line["msg"])
	require.Equal(t, "t1", line["task"])

	_, err = New(Config{Level: "loud"}, &buf)
	require.ErrorContains(t, err, "log.level")
	_, err = New(Config{Format: "xml"}, &buf)
	require.ErrorContains(t, err, "log.format")
}

func TestContext(t *testing.T) {
	t.Parallel()
	require.NotNil(t, FromContext(context.Background()))
	l := zap.NewExample()
	require.Same(t, l, FromContext(WithLogger(context.Background(), l)))
}
