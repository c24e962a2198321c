package httpx

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseRange(t *testing.T) {
	t.Parallel()
	max := strconv.FormatInt(math.MaxInt64, 10)
	tests := []struct {
		name    string
		header  string
		size    int64
		want    Range
		wantErr error
	}{
		{"closed", "bytes=0-99", 1000, Range{0, 100}, nil},
		{"closed middle", "bytes=100-199", 1000, Range{100, 100}, nil},
		{"single byte", "bytes=5-5", 1000, Range{5, 1}, nil},
		{"last byte", "bytes=999-999", 1000, Range{999, 1}, nil},
		{"open ended", "bytes=500-", 1000, Range{500, 500}, nil},
		{"open from zero", "bytes=0-", 1000, Range{0, 1000}, nil},
		{"suffix", "bytes=-100", 1000, Range{900, 100}, nil},
		{"suffix larger than size", "bytes=-5000", 1000, Range{0, 1000}, nil},
		{"end beyond size clamped", "bytes=900-5000", 1000, Range{900, 100}, nil},
		{"end max int clamped", "bytes=0-" + max, 1000, Range{0, 1000}, nil},
		{"unit case", "Bytes=1-2", 1000, Range{1, 2}, nil},
		{"whitespace around", "  bytes = 1 - 2  ", 1000, Range{1, 2}, nil},
		{"leading zeros", "bytes=0001-0002", 1000, Range{1, 2}, nil},
		{"start at size", "bytes=1000-", 1000, Range{}, ErrRangeUnsatisfiable},
		{"start past size", "bytes=2000-3000", 1000, Range{}, ErrRangeUnsatisfiable},
		{"empty suffix", "bytes=-0", 1000, Range{}, ErrRangeUnsatisfiable},
		{"empty content", "bytes=0-", 0, Range{}, ErrRangeUnsatisfiable},
		{"empty content suffix", "bytes=-10", 0, Range{}, ErrRangeUnsatisfiable},
		{"inverted", "bytes=10-5", 1000, Range{}, ErrRangeMalformed},
		{"inverted past end", "bytes=2000-1500", 1000, Range{}, ErrRangeMalformed},
		{"multi range", "bytes=0-1,5-6", 1000, Range{}, ErrRangeMalformed},
		{"trailing comma", "bytes=0-1,", 1000, Range{}, ErrRangeMalformed},
		{"no unit", "0-1", 1000, Range{}, ErrRangeMalformed},
		{"other unit", "items=0-1", 1000, Range{}, ErrRangeMalformed},
		{"empty", "", 1000, Range{}, ErrRangeMalformed},
		{"only unit", "bytes=", 1000, Range{}, ErrRangeMalformed},
		{"only dash", "bytes=-", 1000, Range{}, ErrRangeMalformed},
		{"no dash", "bytes=5", 1000, Range{}, ErrRangeMalformed},
		{"two dashes", "bytes=1-2-3", 1000, Range{}, ErrRangeMalformed},
		{"negative start", "bytes=--5", 1000, Range{}, ErrRangeMalformed},
		{"plus sign", "bytes=+1-2", 1000, Range{}, ErrRangeMalformed},
		{"letters", "bytes=a-b", 1000, Range{}, ErrRangeMalformed},
		{"hex", "bytes=0x10-0x20", 1000, Range{}, ErrRangeMalformed},
		{"inner space", "bytes=1 0-20", 1000, Range{}, ErrRangeMalformed},
		{"overflow start", "bytes=9223372036854775808-", 1000, Range{}, ErrRangeMalformed},
		{"overflow end", "bytes=0-99999999999999999999", 1000, Range{}, ErrRangeMalformed},
		{"overflow suffix", "bytes=-99999999999999999999", 1000, Range{}, ErrRangeMalformed},
		{"too long", "bytes=" + strings.Repeat("0", 200) + "1-2", 1000, Range{}, ErrRangeMalformed},
		{"unknown size closed", "bytes=10-19", -1, Range{10, 10}, nil},
		{"unknown size open", "bytes=10-", -1, Range{}, ErrRangeUnsatisfiable},
		{"unknown size suffix", "bytes=-10", -1, Range{}, ErrRangeUnsatisfiable},
		{"unknown size max end", "bytes=0-" + max, -1, Range{}, ErrRangeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRange(tt.header, tt.size)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestFormatRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		start, length int64
		size          int64
		header        string
		contentRange  string
	}{
		{"closed", 0, 100, 1000, "bytes=0-99", "bytes 0-99/1000"},
		{"tail", 900, 100, 1000, "bytes=900-999", "bytes 900-999/1000"},
		{"open", 10, 0, 1000, "bytes=10-", "bytes 10-999/1000"},
		{"unknown size", 4, 4, -1, "bytes=4-7", "bytes 4-7/*"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := FormatRange(tt.start, tt.length)
			require.Equal(t, tt.header, h)
			r, err := ParseRange(h, tt.size)
			require.NoError(t, err)
			cr := r.ContentRange(tt.size)
			require.Equal(t, tt.contentRange, cr)
			back, total, err := ParseContentRange(cr)
			require.NoError(t, err)
			require.Equal(t, r, back)
			require.Equal(t, tt.size, total)
		})
	}
	require.Equal(t, "bytes */1000", UnsatisfiedContentRange(1000))
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		v     string
		want  Range
		total int64
		ok    bool
	}{
		{"full", "bytes 0-9/10", Range{0, 10}, 10, true},
		{"unknown total", "bytes 5-9/*", Range{5, 5}, -1, true},
		{"past end", "bytes 5-10/10", Range{}, 0, false},
		{"inverted", "bytes 9-5/10", Range{}, 0, false},
		{"unsatisfied form", "bytes */10", Range{}, 0, false},
		{"no unit", "0-9/10", Range{}, 0, false},
		{"garbage", "bytes x-y/z", Range{}, 0, false},
		{"negative", "bytes -1-9/10", Range{}, 0, false},
		{"overflow", "bytes 0-9/99999999999999999999", Range{}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, total, err := ParseContentRange(tt.v)
			if !tt.ok {
				require.ErrorIs(t, err, ErrRangeMalformed)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.total, total)
		})
	}
}

func TestInstrument(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg, "test")
	core, logs := observer.New(zapcore.DebugLevel)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello")
	})
	mux.HandleFunc("GET /missing", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusNotFound)
	})
	srv := httptest.NewServer(m.Instrument("things", mux, zap.New(core)))
	t.Cleanup(srv.Close)

	get := func(path string, header http.Header) int {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
		require.NoError(t, err)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.NoError(t, resp.Body.Close())
		return resp.StatusCode
	}
	require.Equal(t, 200, get("/ok?token=secret-query", http.Header{"Authorization": {"Bearer secret-header"}}))
	require.Equal(t, 200, get("/ok", nil))
	require.Equal(t, 404, get("/missing", nil))

	require.InDelta(t, 2, gather(t, reg, "test_http_requests_total", "things", "GET", "200"), 0)
	require.InDelta(t, 1, gather(t, reg, "test_http_requests_total", "things", "GET", "404"), 0)
	require.InDelta(t, 10+len("nope\n"), gather(t, reg, "test_http_response_bytes_total", "things"), 0)
	require.InDelta(t, 3, gather(t, reg, "test_http_request_duration_seconds", "things"), 0)

	entries := logs.All()
	require.Len(t, entries, 3)
	first := entries[0].ContextMap()
	require.Equal(t, "/ok", first["path"])
	require.Equal(t, int64(200), first["status"])
	require.Equal(t, int64(5), first["bytes"])
	require.Equal(t, int64(404), entries[2].ContextMap()["status"])
	for _, e := range entries {
		for k, v := range e.ContextMap() {
			s, _ := v.(string)
			require.NotContains(t, s, "secret", "field %s leaks a credential", k)
		}
	}

	// A second set of metrics on the same registry reuses the collectors.
	m2 := NewMetrics(reg, "test")
	m2.requests.WithLabelValues("things", "GET", "200").Inc()
	require.InDelta(t, 3, gather(t, reg, "test_http_requests_total", "things", "GET", "200"), 0)
}

// gather returns the value of the metric name whose label values (in label
// name order) are values: a counter's value or a histogram's sample count.
func gather(t *testing.T, reg prometheus.Gatherer, name string, values ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			lps := m.GetLabel()
			if len(lps) != len(values) {
				continue
			}
			// Gather sorts labels by name: code, handler, method.
			got := map[string]string{}
			for _, lp := range lps {
				got[lp.GetName()] = lp.GetValue()
			}
			for _, v := range values {
				found := false
				for _, g := range got {
					if g == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			return value(m)
		}
	}
	t.Fatalf("no metric %s%v", name, values)
	return 0
}

func value(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return float64(m.GetHistogram().GetSampleCount())
}

func TestInstrumentNilMetricsAndLogger(t *testing.T) {
	t.Parallel()
	var m *Metrics
	h := m.Instrument("x", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}), nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, http.StatusTeapot, rec.Code)

	// Flush passes through the wrapper.
	h = NewMetrics(nil, "y").Instrument("x", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "a")
		require.NoError(t, http.NewResponseController(w).Flush())
	}), nil)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.True(t, rec.Flushed)
}

func TestWriteJSON(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	WriteJSON(rec, http.StatusCreated, map[string]int{"a": 1})
	require.Equal(t, http.StatusCreated, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var got map[string]int
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
	require.Equal(t, map[string]int{"a": 1}, got)

	rec = httptest.NewRecorder()
	WriteJSON(rec, http.StatusOK, func() {})
	require.Equal(t, http.StatusInternalServerError, rec.Code)
}
