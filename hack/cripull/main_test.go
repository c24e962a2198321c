package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// fakeImageService answers PullImage over cleartext HTTP/2 on a unix socket
// as a gRPC server does, recording what it was sent.
func fakeImageService(t *testing.T, handle func(image, user, pass string) (ref string, status, message string)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Protocols: new(http.Protocols), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.URL.Path != pullImagePath || r.Header.Get("Content-Type") != "application/grpc" {
			http.Error(w, "not a gRPC PullImage call", http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if len(body) < 5 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
			http.Error(w, "bad frame", http.StatusBadRequest)
			return
		}
		msg := body[5:]
		spec, _ := decodeStringField(msg, 1)
		image, _ := decodeStringField([]byte(spec), 1)
		auth, _ := decodeStringField(msg, 2)
		user, _ := decodeStringField([]byte(auth), 1)
		pass, _ := decodeStringField([]byte(auth), 2)
		ref, status, message := handle(image, user, pass)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		if status == "0" {
			resp := appendBytesField(nil, 1, []byte(ref))
			// An unknown varint field the client must skip.
			resp = append(resp, 2<<3|0, 7)
			frame := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(resp)))
			_, _ = w.Write(append(frame, resp...))
		}
		w.Header().Set("Grpc-Status", status)
		w.Header().Set("Grpc-Message", message)
	})}
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func TestPullImage(t *testing.T) {
	var got [3]string
	sock := fakeImageService(t, func(image, user, pass string) (string, string, string) {
		got = [3]string{image, user, pass}
		if image == "registry.example/missing:1" {
			return "", "5", "not%20found"
		}
		return "sha256:abc", "0", ""
	})

	var out bytes.Buffer
	if err := run([]string{"--address", sock, "--user", "u:p:w", "registry.example/repo:1"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out.String() != "sha256:abc\n" {
		t.Fatalf("printed %q", out.String())
	}
	if got != [3]string{"registry.example/repo:1", "u", "p:w"} {
		t.Fatalf("server saw %q", got)
	}

	out.Reset()
	if err := run([]string{"--address", sock, "registry.example/repo:2"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got != [3]string{"registry.example/repo:2", "", ""} {
		t.Fatalf("server saw %q, want no credentials", got)
	}

	err := run([]string{"--address", sock, "registry.example/missing:1"}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "grpc status 5: not found") {
		t.Fatalf("missing image: err %v", err)
	}
}

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"a", "b"}, {"--user", "nocolon", "img"}} {
		if err := run(args, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
