package log

import (
	"bytes"
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
