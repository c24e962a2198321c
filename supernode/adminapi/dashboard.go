package adminapi

// The operator dashboard, served under /dashboard/ next to /api/v1/ when
// the handler is built WithDashboard:
//
//	GET  /dashboard/              the page (embedded HTML, CSS and JS)
//	POST /dashboard/login         form field "token": the admin token; sets
//	                              the session cookie (204, or 303 to the
//	                              page for a plain form submit)
//	POST /dashboard/logout        ends the session
//	GET  /dashboard/session       {"authenticated": bool}
//	GET  /dashboard/api/overview  tasks, CDN, preheats (session required)
//	GET  /dashboard/api/tasks/:id one task's piece maps, members, transfers
//
// The session cookie holds a random session ID, never the token; the token
// only travels in the login POST body. Data routes answer 401 without a
// valid session. POSTs are refused cross-origin (http.CrossOriginProtection:
// Sec-Fetch-Site, else Origin against Host) on top of SameSite=Strict.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

//go:embed dashboard
var dashboardFS embed.FS

// Dashboard is what the dashboard reads beyond Scheduler and Tasks
// (*task.Manager).
type Dashboard interface {
	TaskDetail(ctx context.Context, id taskid.ID) (scheduler.TaskDetail, error)
	CDNSlots(ctx context.Context) (scheduler.CDNSlots, error)
	CDNUsage() cdn.Usage
}

// PreheatLister lists preheats. A Preheater that is one too has all its
// preheats shown; otherwise the dashboard shows those created through
// this handler.
type PreheatLister interface {
	List(ctx context.Context) ([]preheat.Status, error)
}

// WithDashboard serves the dashboard under /dashboard/, reading d.
func WithDashboard(d Dashboard) Option {
	return func(o *options) { o.dashboard = d }
}

const (
	sessionCookie = "damselfly_dashboard"
	// sessionTTL is how long a session lasts after login.
	sessionTTL = 12 * time.Hour
	// maxSessions bounds the sessions kept: past it, the oldest goes.
	maxSessions = 64
	// maxDashTasks bounds the tasks the overview lists: the most recent.
	maxDashTasks = 200
	// maxRecentPreheats bounds the preheats remembered by ID.
	maxRecentPreheats = 50
)

// sessions holds the dashboard's sessions in memory, by ID.
type sessions struct {
	mu   sync.Mutex
	byID map[string]time.Time // expiry
	now  func() time.Time
}

func newSessions() *sessions {
	return &sessions{byID: make(map[string]time.Time), now: time.Now}
}

// create returns a new session ID.
func (s *sessions) create() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	id := hex.EncodeToString(b[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, exp := range s.byID {
		if !now.Before(exp) {
			delete(s.byID, k)
		}
	}
	for len(s.byID) >= maxSessions {
		oldest, at := "", time.Time{}
		for k, exp := range s.byID {
			if oldest == "" || exp.Before(at) {
				oldest, at = k, exp
			}
		}
		delete(s.byID, oldest)
	}
	s.byID[id] = now.Add(sessionTTL)
	return id
}

func (s *sessions) valid(id string) bool {
	if id == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.byID[id]
	if ok && !s.now().Before(exp) {
		delete(s.byID, id)
		return false
	}
	return ok
}

func (s *sessions) end(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

// recentPreheats remembers the IDs of the preheats created through the
// admin API, newest last.
type recentPreheats struct {
	mu  sync.Mutex
	ids []string
}

func (r *recentPreheats) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, id)
	if len(r.ids) > maxRecentPreheats {
		r.ids = slices.Delete(r.ids, 0, len(r.ids)-maxRecentPreheats)
	}
}

func (r *recentPreheats) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

type dashboard struct {
	h        *handlers
	src      Dashboard
	token    [sha256.Size]byte
	hasToken bool
	sess     *sessions
	cop      *http.CrossOriginProtection
	assets   map[string]asset
}

type asset struct {
	body        []byte
	contentType string
}

func (h *handlers) mountDashboard(e *gin.Engine, src Dashboard, token string) {
	d := &dashboard{
		h: h, src: src, token: sha256.Sum256([]byte(token)), hasToken: token != "",
		sess: newSessions(), cop: http.NewCrossOriginProtection(),
		assets: make(map[string]asset),
	}
	for name, ct := range map[string]string{
		"index.html": "text/html; charset=utf-8",
		"app.js":     "text/javascript; charset=utf-8",
		"app.css":    "text/css; charset=utf-8",
	} {
		b, err := dashboardFS.ReadFile("dashboard/" + name)
		if err != nil {
			panic("adminapi: dashboard asset missing: " + name) // embedded at build time
		}
		d.assets[name] = asset{body: b, contentType: ct}
	}
	g := e.Group("/dashboard", d.headers)
	e.GET("/dashboard", func(c *gin.Context) { c.Redirect(http.StatusMovedPermanently, "/dashboard/") })
	g.GET("/", d.serve("index.html"))
	g.GET("/app.js", d.serve("app.js"))
	g.GET("/app.css", d.serve("app.css"))
	g.GET("/session", d.session)
	g.POST("/login", d.sameOrigin, d.login)
	g.POST("/logout", d.sameOrigin, d.logout)
	api := g.Group("/api", d.requireSession)
	api.GET("/overview", d.overview)
	api.GET("/tasks/:id", d.taskDetail)
}

// headers sets the security headers of every dashboard answer.
func (d *dashboard) headers(c *gin.Context) {
	w := c.Writer.Header()
	w.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	w.Set("X-Content-Type-Options", "nosniff")
	w.Set("X-Frame-Options", "DENY")
	w.Set("Referrer-Policy", "no-referrer")
	w.Set("Cache-Control", "no-store")
	c.Next()
}

func (d *dashboard) serve(name string) gin.HandlerFunc {
	a := d.assets[name]
	return func(c *gin.Context) { c.Data(http.StatusOK, a.contentType, a.body) }
}

// sameOrigin refuses cross-origin POSTs.
func (d *dashboard) sameOrigin(c *gin.Context) {
	if err := d.cop.Check(c.Request); err != nil {
		c.AbortWithStatusJSON(http.StatusForbidden, errorBody{Code: "FORBIDDEN", Message: "cross-origin request refused"})
		return
	}
	c.Next()
}

// session answers whether the request carries a valid session: the page
// asks before it shows the login form or the dashboard.
func (d *dashboard) session(c *gin.Context) {
	ck, err := c.Request.Cookie(sessionCookie)
	c.JSON(http.StatusOK, gin.H{"authenticated": err == nil && d.sess.valid(ck.Value)})
}

func (d *dashboard) requireSession(c *gin.Context) {
	ck, err := c.Request.Cookie(sessionCookie)
	if err != nil || !d.sess.valid(ck.Value) {
		c.AbortWithStatusJSON(http.StatusUnauthorized, errorBody{Code: "UNAUTHORIZED", Message: "log in to the dashboard"})
		return
	}
	c.Next()
}

// navigation reports whether the request is a plain form submit (no
// script): it is answered with a redirect to the page.
func navigation(r *http.Request) bool { return r.Header.Get("Sec-Fetch-Mode") == "navigate" }

func (d *dashboard) login(c *gin.Context) {
	r := c.Request
	r.Body = http.MaxBytesReader(c.Writer, r.Body, 4096)
	got := r.PostFormValue("token")
	sum := sha256.Sum256([]byte(got))
	if !d.hasToken || subtle.ConstantTimeCompare(sum[:], d.token[:]) != 1 {
		d.h.log.Warn("dashboard login refused", zap.String("remote", c.ClientIP()))
		if navigation(r) {
			c.Redirect(http.StatusSeeOther, "/dashboard/#login-failed")
			return
		}
		c.AbortWithStatusJSON(http.StatusUnauthorized, errorBody{Code: "UNAUTHORIZED", Message: "wrong token"})
		return
	}
	id := d.sess.create()
	http.SetCookie(c.Writer, &http.Cookie{
		Name: sessionCookie, Value: id, Path: "/dashboard/", MaxAge: int(sessionTTL / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	d.h.log.Info("dashboard login", zap.String("remote", c.ClientIP()))
	if navigation(r) {
		c.Redirect(http.StatusSeeOther, "/dashboard/")
		return
	}
	c.Status(http.StatusNoContent)
}

func (d *dashboard) logout(c *gin.Context) {
	if ck, err := c.Request.Cookie(sessionCookie); err == nil {
		d.sess.end(ck.Value)
	}
	http.SetCookie(c.Writer, &http.Cookie{
		Name: sessionCookie, Value: "", Path: "/dashboard/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: c.Request.TLS != nil,
	})
	if navigation(c.Request) {
		c.Redirect(http.StatusSeeOther, "/dashboard/")
		return
	}
	c.Status(http.StatusNoContent)
}

// DashTask is one task in the dashboard's overview.
type DashTask struct {
	TaskID     string    `json:"taskId"`
	URL        string    `json:"url,omitempty"`
	State      string    `json:"state"`
	Size       int64     `json:"size"`
	PieceCount int       `json:"pieceCount"`
	Published  int       `json:"published"`
	Error      string    `json:"error,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	// Peers counts the members; Complete those holding every piece.
	Peers           int   `json:"peers"`
	Complete        int   `json:"complete"`
	BytesFromSource int64 `json:"bytesFromSource"`
	BytesFromCDN    int64 `json:"bytesFromCdn"`
	BytesFromPeers  int64 `json:"bytesFromPeers"`
	// Offload is 1 - bytes from the source / bytes delivered to peers,
	// null before anything was delivered.
	Offload *float64 `json:"offload"`
}

// DashCDN is the CDN in the dashboard's overview.
type DashCDN struct {
	Used        int64 `json:"used"`
	Fetching    int64 `json:"fetching"`
	Quota       int64 `json:"quota"`
	Fetches     int   `json:"fetches"`
	SlotsBusy   int   `json:"slotsBusy"`
	SlotsTotal  int   `json:"slotsTotal"`
	Assignments int   `json:"assignments"`
}

// Overview answers GET /dashboard/api/overview.
type Overview struct {
	Now time.Time `json:"now"`
	// TotalTasks counts every task; Tasks lists the most recent ones.
	TotalTasks int        `json:"totalTasks"`
	Tasks      []DashTask `json:"tasks"`
	Peers      int        `json:"peers"`
	CDN        DashCDN    `json:"cdn"`
	// Preheats lists the preheats, newest first; PreheatsNote says which.
	Preheats     []preheat.Status `json:"preheats"`
	PreheatsNote string           `json:"preheatsNote,omitempty"`
}

func offload(source, delivered int64) *float64 {
	if delivered <= 0 {
		return nil
	}
	f := max(0, 1-float64(source)/float64(delivered))
	return &f
}

func (d *dashboard) overview(c *gin.Context) {
	ctx := c.Request.Context()
	tasks, err := d.h.sched.Tasks(ctx)
	if err != nil {
		_ = c.Error(err)
		return
	}
	peers, err := d.h.sched.Peers(ctx)
	if err != nil {
		_ = c.Error(err)
		return
	}
	slots, err := d.src.CDNSlots(ctx)
	if err != nil {
		_ = c.Error(err)
		return
	}
	slices.SortStableFunc(tasks, func(a, b scheduler.TaskStatus) int { return b.CreatedAt.Compare(a.CreatedAt) })
	out := Overview{Now: time.Now(), TotalTasks: len(tasks), Peers: len(peers), Tasks: make([]DashTask, 0, min(len(tasks), maxDashTasks))}
	for _, ts := range tasks[:min(len(tasks), maxDashTasks)] {
		src := d.h.tasks.SourceBytes(ts.ID)
		dt := DashTask{TaskID: ts.TaskID, URL: ts.URL, State: string(ts.State), Size: ts.Size, PieceCount: ts.PieceCount,
			Published: ts.Published, Error: ts.Error, CreatedAt: ts.CreatedAt, Peers: len(ts.Peers),
			BytesFromSource: src, BytesFromCDN: ts.BytesFromCDN, BytesFromPeers: ts.BytesFromPeers,
			Offload: offload(src, ts.BytesFromCDN+ts.BytesFromPeers)}
		for _, p := range ts.Peers {
			if ts.PieceCount > 0 && p.Pieces >= ts.PieceCount {
				dt.Complete++
			}
		}
		out.Tasks = append(out.Tasks, dt)
	}
	u := d.src.CDNUsage()
	out.CDN = DashCDN{Used: u.Used, Fetching: u.Fetching, Quota: u.Quota, Fetches: u.Fetches,
		SlotsBusy: slots.Busy, SlotsTotal: slots.Total, Assignments: slots.Assignments}
	out.Preheats, out.PreheatsNote = d.preheats(ctx)
	c.JSON(http.StatusOK, out)
}

// preheats lists the preheats to show, newest first.
func (d *dashboard) preheats(ctx context.Context) ([]preheat.Status, string) {
	if d.h.preheat == nil {
		return []preheat.Status{}, "preheats are not enabled on this supernode"
	}
	return d.h.preheatList(ctx)
}

// DashMember is one member of a task in the dashboard's task view.
type DashMember struct {
	TaskPeer
	Strikes int `json:"strikes"`
	// Held is the bitmap of the pieces held, base64: piece i is bit i%8 of
	// byte i/8.
	Held []byte `json:"held"`
	// PiecesIn counts the pieces the member received and reported OK;
	// PiecesOut the pieces it delivered to others.
	PiecesIn  int `json:"piecesIn"`
	PiecesOut int `json:"piecesOut"`
}

// DashTransfer is one piece in flight.
type DashTransfer struct {
	Piece   int    `json:"piece"`
	From    string `json:"from"`
	To      string `json:"to"`
	Started bool   `json:"started"`
}

// DashEdge counts the pieces one peer delivered to another.
type DashEdge struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Pieces int    `json:"pieces"`
}

// TaskView answers GET /dashboard/api/tasks/:id.
type TaskView struct {
	DashTask
	PieceSize int64          `json:"pieceSize"`
	CDNFanout int            `json:"cdnFanout"`
	CDNID     string         `json:"cdnId"`
	CDNHeld   []byte         `json:"cdnHeld"`
	Members   []DashMember   `json:"members"`
	InFlight  []DashTransfer `json:"inFlight"`
	Edges     []DashEdge     `json:"edges"`
}

func (d *dashboard) taskDetail(c *gin.Context) {
	id, err := taskParam(c)
	if err != nil {
		_ = c.Error(err)
		return
	}
	td, err := d.src.TaskDetail(c.Request.Context(), id)
	if err != nil {
		_ = c.Error(err)
		return
	}
	src := d.h.tasks.SourceBytes(td.ID)
	v := TaskView{
		DashTask: DashTask{TaskID: td.TaskID, URL: td.URL, State: string(td.State), Size: td.Size, PieceCount: td.PieceCount,
			Published: td.Published, Error: td.Error, CreatedAt: td.CreatedAt, Peers: len(td.Peers),
			BytesFromSource: src, BytesFromCDN: td.BytesFromCDN, BytesFromPeers: td.BytesFromPeers,
			Offload: offload(src, td.BytesFromCDN+td.BytesFromPeers)},
		PieceSize: td.PieceSize, CDNFanout: td.CDNFanout, CDNID: td.CDNID, CDNHeld: td.CDNHeld,
		Members: make([]DashMember, 0, len(td.Peers)), InFlight: make([]DashTransfer, 0, len(td.InFlight)),
		Edges: make([]DashEdge, 0, len(td.Delivered)),
	}
	held := make(map[string][]byte, len(td.Members))
	for _, m := range td.Members {
		held[m.ID] = m.Held
	}
	in, out := map[string]int{}, map[string]int{}
	for _, e := range td.Delivered {
		v.Edges = append(v.Edges, DashEdge{From: e.From, To: e.To, Pieces: e.Pieces})
		in[e.To] += e.Pieces
		out[e.From] += e.Pieces
	}
	for _, p := range td.Peers {
		if td.PieceCount > 0 && p.Pieces >= td.PieceCount {
			v.Complete++
		}
		v.Members = append(v.Members, DashMember{
			TaskPeer: TaskPeer{ID: p.ID, Addr: p.Addr, Pieces: p.Pieces, Struck: p.Struck, Uploading: p.Uploading,
				DownloadRate: p.DownloadRate, LastSeen: p.LastSeen},
			Strikes: p.Strikes, Held: held[p.ID], PiecesIn: in[p.ID], PiecesOut: out[p.ID],
		})
	}
	for _, t := range td.InFlight {
		v.InFlight = append(v.InFlight, DashTransfer{Piece: t.Piece, From: t.From, To: t.To, Started: t.Started})
	}
	c.JSON(http.StatusOK, v)
}

// isDashboard reports whether path is the dashboard's.
func isDashboard(path string) bool {
	return path == "/dashboard" || strings.HasPrefix(path, "/dashboard/")
}
