// Package uitest drives the supernode's dashboard in a real browser
// (Debian's chromium, headless, through chromedp) against a real
// in-process supernode and real dfget downloads. It is its own module so
// that chromedp stays out of the main go.mod; run it with `make ui-test`.
//
// UITEST_SCREENSHOTS=DIR keeps the screenshots in DIR (docs/ for the
// ones in the repository); CHROMIUM sets the browser (default
// /usr/bin/chromium).
package uitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	dfget "github.com/damselfly/damselfly/dfget/cmd"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

const adminToken = "uitest-admin-token-0123456789"

// origin serves named blobs of random bytes, slowly enough that a
// download is seen running.
func origin(t *testing.T, sizes map[string]int) *httptest.Server {
	t.Helper()
	blobs := make(map[string][]byte, len(sizes))
	for name, n := range sizes {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		blobs["/"+name] = b
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := blobs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		var out http.ResponseWriter = w
		if strings.HasPrefix(r.URL.Path, "/slow") {
			out = throttled{w}
		}
		http.ServeContent(out, r, r.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// throttled sends at about 16 MiB/s.
type throttled struct{ http.ResponseWriter }

func (t throttled) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		m, err := t.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
		time.Sleep(4 * time.Millisecond)
	}
	return n, nil
}

// download runs n dfgets of url at once, in-process, and waits for them.
func download(t *testing.T, sn *supernodetest.Supernode, url string, n int, extra ...string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(t.TempDir(), fmt.Sprintf("out-%d", i))
			var stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			err := dfget.Run(ctx, append([]string{
				"-u", url, "-o", out, "--node", sn.Addr, "--cluster-token-file", sn.ClusterTokenFile,
				"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1", "--log-level", "error",
				"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
			}, extra...), io.Discard, &stderr)
			if err != nil {
				errs <- fmt.Errorf("dfget %d: %w\n%s", i, err, stderr.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// problems collects what the page must not produce: console errors and
// warnings, uncaught exceptions, browser log errors (CSP violations,
// failed loads).
type problems struct {
	mu   sync.Mutex
	list []string
}

func (p *problems) add(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = append(p.list, s)
}

func (p *problems) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.list...)
}

func TestDashboardInBrowser(t *testing.T) {
	browser := browserPath(t)
	shots := os.Getenv("UITEST_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}

	sn := supernodetest.Start(t, adminToken)
	src := origin(t, map[string]int{"first.bin": 40 << 20, "slow/second.bin": 64 << 20, "preheated.bin": 12 << 20})
	download(t, sn, src.URL+"/first.bin", 3)
	// A download whose source answers 404: a failed task, with its reason.
	ctxF, cancelF := context.WithTimeout(context.Background(), time.Minute)
	defer cancelF()
	if err := dfget.Run(ctxF, []string{
		"-u", src.URL + "/missing.bin", "-o", filepath.Join(t.TempDir(), "missing"), "--node", sn.Addr,
		"--cluster-token-file", sn.ClusterTokenFile, "--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
		"--log-level", "error", "--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32", "--notbs",
	}, io.Discard, io.Discard); err == nil {
		t.Fatal("the download of a missing file succeeded")
	}
	// A preheat of a file, through the admin API.
	req, err := http.NewRequest(http.MethodPost, "http://"+sn.Addr+"/api/v1/preheats",
		strings.NewReader(`{"type":"file","url":"`+src.URL+`/preheated.bin"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("preheat: %s", resp.Status)
	}

	ctx, cancel := newBrowser(t, browser)
	defer cancel()
	bad := watchConsole(ctx)

	page := "http://" + sn.Addr + "/dashboard/"
	do(t, ctx, "log in",
		chromedp.Navigate(page),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.SendKeys(chromedp.ID("token"), adminToken),
		chromedp.Submit(chromedp.ID("login-form")),
		chromedp.WaitVisible(chromedp.ID("dash-view")),
	)
	if cookie := eval[string](t, ctx, `document.cookie`); cookie != "" {
		t.Errorf("the page sees the cookie %q: the session must be HttpOnly", cookie)
	}
	if stored := eval[string](t, ctx, `JSON.stringify(localStorage) + JSON.stringify(sessionStorage)`); stored != "{}{}" {
		t.Errorf("the page stores %q in web storage", stored)
	}
	if u := eval[string](t, ctx, `location.href`); strings.Contains(u, adminToken) {
		t.Errorf("the token is in the URL %s", u)
	}
	eval[int](t, ctx, `window.__uitest = 1`)

	waitJS(t, ctx, "the first task listed as succeeded",
		`[...document.querySelectorAll('#tasks-body tr[data-id]')].some(r => r.textContent.includes('first.bin') && r.textContent.includes('succeeded'))`)
	waitJS(t, ctx, "the CDN disk card filled", `document.getElementById('s-disk').textContent !== '–'`)
	waitJS(t, ctx, "the failed task with its reason", `document.querySelector('#tasks-body .reason') !== null`)
	waitJS(t, ctx, "the preheat listed and done", `document.getElementById('preheats-body').textContent.includes('succeeded')`)
	screenshot(t, ctx, filepath.Join(shots, "dashboard.png"))

	// A second task started after the page loaded shows up without a
	// reload. Its dfgets are rate-limited, so that it is seen running.
	done := make(chan struct{})
	go func() {
		defer close(done)
		download(t, sn, src.URL+"/slow/second.bin", 3, "--locallimit", "10M")
	}()
	waitJS(t, ctx, "the second task listed",
		`[...document.querySelectorAll('#tasks-body tr[data-id]')].some(r => r.textContent.includes('second.bin'))`)
	if eval[int](t, ctx, `window.__uitest`) != 1 {
		t.Error("the page reloaded")
	}

	// The view of the running task: piece map, members, transfer graph.
	do(t, ctx, "select the second task",
		chromedp.Click(chromedp.JSPath(`[...document.querySelectorAll('#tasks-body tr[data-id]')].find(r => r.textContent.includes('second.bin'))`)))
	waitJS(t, ctx, "the task view with its members",
		`!document.getElementById('task-view').hidden && document.querySelectorAll('#members-body tr:not(.empty)').length === 3 && document.querySelectorAll('#graph circle').length === 4`)
	waitJS(t, ctx, "the piece map drawn", `document.getElementById('pm-note').textContent.includes('3 members')`)
	waitJS(t, ctx, "pieces moving between peers", `document.querySelectorAll('#graph path[marker-end]').length >= 2`)
	do(t, ctx, "scroll", chromedp.ScrollIntoView(chromedp.ID("task-view")))
	screenshot(t, ctx, filepath.Join(shots, "dashboard-task.png"))

	<-done
	waitJS(t, ctx, "the second task succeeded",
		`[...document.querySelectorAll('#tasks-body tr[data-id]')].some(r => r.textContent.includes('second.bin') && r.textContent.includes('succeeded'))`)
	// (The failed task may have been forgotten by now: failed tasks do not
	// linger.)
	if n := eval[int](t, ctx, `[...document.querySelectorAll('#tasks-body tr[data-id]')].filter(r => /first\.bin|second\.bin|preheated\.bin/.test(r.textContent)).length`); n != 3 {
		t.Errorf("%d of the rows of first.bin, second.bin and preheated.bin, want 3", n)
	}
	if eval[int](t, ctx, `window.__uitest`) != 1 {
		t.Error("the page reloaded")
	}

	// Logging out ends the session.
	do(t, ctx, "log out",
		chromedp.Click(chromedp.CSS(`#logout-form button`)),
		chromedp.WaitVisible(chromedp.ID("login-form")))
	if st := eval[int](t, ctx, `fetch('api/overview').then(r => r.status)`, chromedp.EvalAwaitPromise); st != 401 {
		t.Errorf("after logout the data endpoint answers %d, want 401", st)
	}

	cancel()
	for _, p := range bad() {
		if strings.Contains(p, "api/overview") && strings.Contains(p, "401") {
			continue // the check just above
		}
		t.Errorf("browser: %s", p)
	}
}

func browserPath(t *testing.T) string {
	t.Helper()
	browser := os.Getenv("CHROMIUM")
	if browser == "" {
		browser = "/usr/bin/chromium"
	}
	if _, err := os.Stat(browser); err != nil {
		t.Fatalf("no browser at %s (apt-get install chromium, or set CHROMIUM): %v", browser, err)
	}
	return browser
}

// newBrowser starts a headless chromium; cancel stops it.
func newBrowser(t *testing.T, browser string) (context.Context, context.CancelFunc) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1440, 1000))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	return ctx, func() { cancel(); cancelAlloc() }
}

// watchConsole collects every console error or warning, uncaught
// exception and browser log error (CSP violations, failed loads); the
// returned func gives them once the context is cancelled.
func watchConsole(ctx context.Context) func() []string {
	var bad problems
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			switch m.Type {
			case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException:
				bad.add(fmt.Sprintf("%s (%s %s)", m, m.Source, m.URL))
			}
		}
	}()
	return func() []string {
		<-done
		return bad.all()
	}
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](t *testing.T, ctx context.Context, expr string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits, without reloading, until expr is true in the page.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !eval[bool](t, ctx, expr) {
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main#dash-view")))
			t.Fatalf("%s: not within 45s; page:\n%s", what, html)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	time.Sleep(1600 * time.Millisecond) // one more poll: every number settled
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}
