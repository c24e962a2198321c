package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

// offlineResolver parses references with the real registry client and
// fails every resolution: the fuzzer reaches no network.
type offlineResolver struct{ *registrysource.Client }

var errOffline = errors.New("offline")

func (offlineResolver) ResolveImage(context.Context, registrysource.ImageRef, *ocispec.Platform, registrysource.Credentials) (*registrysource.Image, error) {
	return nil, errOffline
}

// offlineTasks refuses every task.
type offlineTasks struct{}

func (offlineTasks) Ensure(context.Context, task.Request) (schedapi.TaskInfo, error) {
	return schedapi.TaskInfo{}, errOffline
}

func (offlineTasks) Task(context.Context, taskid.ID) (scheduler.TaskStatus, error) {
	return scheduler.TaskStatus{}, scheduler.ErrTaskNotFound
}

// fuzzCanary is a credential the fuzzer places in preheat bodies: no answer
// may carry it.
const fuzzCanary = "canary-pw-5c0d3e"

// FuzzAdminAPI drives the admin handler, with a real scheduler and a real
// preheater behind it, with fuzzed methods, paths and bodies: never a 5xx,
// every error a JSON {"code","message"}, and a password or token in a
// preheat body never comes back.
func FuzzAdminAPI(f *testing.F) {
	hex := strings.Repeat("ab", 32)
	for _, s := range []struct{ method, path, body string }{
		{"POST", "/api/v1/preheats", `{"type":"image","url":"127.0.0.1:5000/library/app:1","platform":"linux/amd64","username":"u","password":"` + fuzzCanary + `"}`},
		{"POST", "/api/v1/preheats", `{"type":"image","url":"alpine","token":"` + fuzzCanary + `"}`},
		{"POST", "/api/v1/preheats", `{"type":"file","url":"http://127.0.0.1:1/f","digest":"sha256:` + hex + `","headers":{"Authorization":"Bearer ` + fuzzCanary + `"}}`},
		{"POST", "/api/v1/preheats", `{"type":"file","url":"file:///etc/passwd","password":"` + fuzzCanary + `"}`},
		{"POST", "/api/v1/preheats", `{"type":"image","url":"Alpine/../x","platform":"linux/amd64/v8/extra"}`},
		{"POST", "/api/v1/preheats", `{"type":"file","url":"http://h/f","digest":"0","headers":{"A\r\nB":"c"}}`},
		{"POST", "/api/v1/preheats", `{"type":"image","url":"a","extra":1}`},
		{"POST", "/api/v1/preheats", `{"type":"image"} {"type":"file"}`},
		{"POST", "/api/v1/preheats", `[]`},
		{"POST", "/api/v1/preheats", `{"type":` + strings.Repeat("[", 5000)},
		{"GET", "/api/v1/preheats/..%2F..%2Fetc%2Fpasswd", ""},
		{"GET", "/api/v1/tasks", ""},
		{"GET", "/api/v1/tasks/sha256:" + hex, ""},
		{"GET", "/api/v1/tasks/..%2F..%2Fetc%2Fpasswd", ""},
		{"DELETE", "/api/v1/tasks/" + hex, ""},
		{"DELETE", "/api/v1/tasks/%00", ""},
		{"GET", "/api/v1/peers", ""},
		{"PUT", "/api/v1/tasks", "x"},
		{"GET", "/api/v2/nothing", ""},
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}

	s, err := scheduler.New(scheduler.Config{}, schedapi.Peer{ID: "supernode", Addr: "127.0.0.1:8002"})
	if err != nil {
		f.Fatal(err)
	}
	ph := preheat.New(preheat.Config{}, offlineResolver{registrysource.New()}, offlineTasks{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- s.Run(ctx) }()
	go func() { done <- ph.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				f.Error(err)
			}
		}
	})
	h := New(s, &fakeCDN{sched: s}, token, WithPreheater(ph))

	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://supernode"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %q with %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 {
			var e errorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("%s %q: %d with body %q, not an error body", method, path, rec.Code, rec.Body)
			}
		}
		if rec.Code == http.StatusAccepted {
			if loc := rec.Header().Get("Location"); !strings.HasPrefix(loc, "/api/v1/preheats/") || strings.ContainsAny(loc[len("/api/v1/preheats/"):], "/.%\r\n") {
				t.Fatalf("preheat Location %q", loc)
			}
		}
		// The canary may only come back when the request put it somewhere
		// other than a credential.
		var pr preheat.Request
		if json.Unmarshal(body, &pr) == nil && (strings.Contains(pr.Password, fuzzCanary) || strings.Contains(pr.Token, fuzzCanary)) {
			public := pr.Type + pr.URL + pr.Platform + pr.Username + pr.Digest + path
			if !strings.Contains(public, fuzzCanary) && strings.Contains(rec.Body.String(), fuzzCanary) {
				t.Fatalf("%s %q: credential in the answer %s", method, path, rec.Body)
			}
		}
	})
}
