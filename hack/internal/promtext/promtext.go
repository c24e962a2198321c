// Package promtext reads the few Prometheus samples the hack/ commands
// report from a daemon's /metrics (the text exposition format).
package promtext

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Text is a scraped exposition: its sample lines, comments dropped.
type Text []string

// Scrape fetches url (a /metrics endpoint) with GET.
func Scrape(ctx context.Context, url string) (Text, error) {
	return ScrapeWith(ctx, http.DefaultClient, url)
}

// ScrapeWith is Scrape through hc.
func ScrapeWith(ctx context.Context, hc *http.Client, url string) (Text, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var m Text
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && line[0] != '#' {
			m = append(m, line)
		}
	}
	return m, sc.Err()
}

// Sum adds the values of the samples of metric whose labels contain label,
// for example `from="cdn"` (every sample of metric when label is empty).
func (m Text) Sum(metric, label string) float64 {
	var total float64
	for _, line := range m {
		name, rest, _ := strings.Cut(line, " ")
		labels := ""
		if i := strings.IndexByte(line, '{'); i >= 0 && i < len(name) {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, labels, rest = line[:i], line[i:j+1], strings.TrimSpace(line[j+1:])
		}
		if name != metric || !strings.Contains(labels, label) {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			total += v
		}
	}
	return total
}
