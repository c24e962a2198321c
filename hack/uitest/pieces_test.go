package uitest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/chromedp/chromedp"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/adminapi"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// bigSwarm is the admin API's view of a scheduler driven by hand: the
// CDN of a real supernode cuts pieces of 4 MiB at least, and a 1,000-piece
// task would take 4 GiB.
type bigSwarm struct{ s *scheduler.Scheduler }

func (b bigSwarm) Delete(ctx context.Context, id taskid.ID) error { return b.s.RemoveTask(ctx, id) }
func (bigSwarm) SourceBytes(taskid.ID) int64                      { return 100_000 }
func (b bigSwarm) TaskDetail(ctx context.Context, id taskid.ID) (scheduler.TaskDetail, error) {
	return b.s.TaskDetail(ctx, id)
}
func (b bigSwarm) CDNSlots(ctx context.Context) (scheduler.CDNSlots, error) { return b.s.CDNSlots(ctx) }
func (bigSwarm) CDNUsage() cdn.Usage {
	return cdn.Usage{Used: 700 << 20, Quota: 1 << 30, Fetches: 1, Fetching: 30 << 20}
}

// TestPieceMapThousandPieces draws the task view of a 1,000-piece task
// with 30 members and pieces in flight, and checks the piece map keeps its
// size and draws every member.
func TestPieceMapThousandPieces(t *testing.T) {
	browser := browserPath(t)
	s, err := scheduler.New(scheduler.Config{}, schedapi.Peer{ID: "cdn", Addr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	t.Cleanup(func() { stop(); <-done })

	ctx := t.Context()
	const n = 1000
	id, _ := taskid.ForDigest(digest.FromString("thousand"))
	must(t, s.AddTask(ctx, scheduler.TaskSpec{ID: id, URL: "http://origin.invalid/v2/team/app/blobs/sha256:" + strings.Repeat("ab", 32), PieceSize: 100, Size: n * 100}))
	for i := range 700 {
		must(t, s.PublishPiece(ctx, id, i, digest.FromString(fmt.Sprint(i))))
	}
	for p := range 30 {
		have := &piece.Set{}
		for i := range 700 {
			if (i*7+p*13)%30 < p {
				have.Add(i)
			}
		}
		_, err := s.Join(ctx, id, schedapi.Peer{ID: fmt.Sprintf("node-%02d", p), Addr: fmt.Sprintf("127.0.0.1:%d", 20000+p), DownloadRate: int64(p+1) << 20}, have)
		must(t, err)
	}
	for p := range 30 {
		resp, err := s.Poll(ctx, id, fmt.Sprintf("node-%02d", p), 4)
		must(t, err)
		var res []schedapi.PieceResult
		for _, a := range resp.Assignments[:len(resp.Assignments)/2] {
			res = append(res, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, OK: true, Bytes: a.Length})
		}
		must(t, s.Report(ctx, id, fmt.Sprintf("node-%02d", p), res))
	}

	const token = "big-swarm-token"
	srv := httptest.NewServer(adminapi.New(s, bigSwarm{s}, token, adminapi.WithDashboard(bigSwarm{s})))
	t.Cleanup(srv.Close)

	bctx, cancel := newBrowser(t, browser)
	defer cancel()
	bad := watchConsole(bctx)
	do(t, bctx, "log in",
		chromedp.Navigate(srv.URL+"/dashboard/"),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Submit(chromedp.ID("login-form")),
		chromedp.WaitVisible(chromedp.ID("dash-view")))
	waitJS(t, bctx, "the task listed", `document.querySelectorAll('#tasks-body tr[data-id]').length === 1`)
	do(t, bctx, "select it", chromedp.Click(chromedp.CSS(`#tasks-body tr[data-id]`)))
	waitJS(t, bctx, "the piece map of 30 members", `document.getElementById('pm-note').textContent.startsWith('1000 pieces · 30 members')`)
	if name := eval[string](t, bctx, `document.getElementById('tv-title').textContent`); name != "team/app@sha256:abababababab" {
		t.Errorf("task named %q", name)
	}
	// 31 rows of 8 px (+2 gap): the map stays compact.
	if h := eval[int](t, bctx, `document.getElementById('piecemap').clientHeight`); h < 200 || h > 400 {
		t.Errorf("piece map %d px high", h)
	}
	do(t, bctx, "scroll", chromedp.ScrollIntoView(chromedp.ID("task-view")))
	shots := os.Getenv("UITEST_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	screenshot(t, bctx, filepath.Join(shots, "dashboard-1000-pieces.png"))
	cancel()
	for _, p := range bad() {
		t.Errorf("browser: %s", p)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
