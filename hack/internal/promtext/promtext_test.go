package promtext

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSum(t *testing.T) {
	t.Parallel()
	m := Text{
		`damselfly_peer_received_bytes_total{from="cdn"} 1.048576e+06`,
		`damselfly_peer_received_bytes_total{from="peer"} 3000`,
		`damselfly_peer_received_bytes_total_extra{from="peer"} 7`,
		`damselfly_peer_source_fallbacks_total 2`,
		`damselfly_broken{from="x"`,
		`damselfly_empty_value `,
	}
	require.Equal(t, 1048576.0, m.Sum("damselfly_peer_received_bytes_total", `from="cdn"`))
	require.Equal(t, 1051576.0, m.Sum("damselfly_peer_received_bytes_total", ""))
	require.Equal(t, 2.0, m.Sum("damselfly_peer_source_fallbacks_total", ""))
	require.Zero(t, m.Sum("missing", ""))
	require.Zero(t, m.Sum("damselfly_empty_value", ""))
}

func TestScrape(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("# HELP x total\n# TYPE x counter\nx{a=\"1\"} 4\n\nx{a=\"2\"} 5\n"))
	}))
	t.Cleanup(srv.Close)
	m, err := Scrape(t.Context(), srv.URL+"/metrics")
	require.NoError(t, err)
	require.Equal(t, Text{`x{a="1"} 4`, `x{a="2"} 5`}, m)
	require.Equal(t, 9.0, m.Sum("x", ""))

	_, err = Scrape(t.Context(), srv.URL+"/nothing")
	require.ErrorContains(t, err, "404")
}
