// Command cripull pulls an image through containerd's CRI image service, the
// way the kubelet (or crictl pull) does, so hack/e2e-runtimes.sh can check
// that the CRI plugin's registry config_path sends pulls through dfdaemon.
//
//	cripull --address /run/containerd/containerd.sock [--user USER:PASSWORD] IMAGE
//
// It prints the image reference the runtime answers (for containerd, the
// image ID: the config digest). It speaks gRPC over cleartext HTTP/2 with the
// standard library and encodes the two small CRI messages it needs by hand,
// so it needs no CRI or gRPC module.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const pullImagePath = "/runtime.v1.ImageService/PullImage"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cripull:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cripull", flag.ContinueOnError)
	fs.SetOutput(stderr)
	address := fs.String("address", "/run/containerd/containerd.sock", "containerd's gRPC unix `socket`")
	user := fs.String("user", "", "registry credentials `user:password` sent with the pull")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want exactly one image reference")
	}
	var username, password string
	if *user != "" {
		var ok bool
		username, password, ok = strings.Cut(*user, ":")
		if !ok {
			return errors.New("--user: want user:password")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ref, err := pullImage(ctx, *address, fs.Arg(0), username, password)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, ref)
	return nil
}

// pullImage calls ImageService.PullImage and returns the response's
// image_ref.
func pullImage(ctx context.Context, socket, image, username, password string) (string, error) {
	req := encodePullImageRequest(image, username, password)
	resp, err := unaryCall(ctx, socket, pullImagePath, req)
	if err != nil {
		return "", err
	}
	ref, err := decodeStringField(resp, 1)
	if err != nil {
		return "", fmt.Errorf("PullImageResponse: %w", err)
	}
	return ref, nil
}

// encodePullImageRequest encodes
//
//	PullImageRequest { ImageSpec image = 1; AuthConfig auth = 2; }
//	ImageSpec        { string image = 1; }
//	AuthConfig       { string username = 1; string password = 2; }
func encodePullImageRequest(image, username, password string) []byte {
	spec := appendBytesField(nil, 1, []byte(image))
	msg := appendBytesField(nil, 1, spec)
	if username != "" || password != "" {
		auth := appendBytesField(nil, 1, []byte(username))
		auth = appendBytesField(auth, 2, []byte(password))
		msg = appendBytesField(msg, 2, auth)
	}
	return msg
}

// appendBytesField appends a length-delimited protobuf field.
func appendBytesField(b []byte, field int, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(field)<<3|2)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// decodeStringField returns the last value of a length-delimited field of a
// protobuf message, skipping every other field.
func decodeStringField(msg []byte, want int) (string, error) {
	var out string
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return "", errors.New("bad field key")
		}
		msg = msg[n:]
		field, wire := int(key>>3), key&7
		switch wire {
		case 0: // varint
			_, n = binary.Uvarint(msg)
			if n <= 0 {
				return "", errors.New("bad varint")
			}
			msg = msg[n:]
		case 1: // 64-bit
			if len(msg) < 8 {
				return "", errors.New("short fixed64")
			}
			msg = msg[8:]
		case 5: // 32-bit
			if len(msg) < 4 {
				return "", errors.New("short fixed32")
			}
			msg = msg[4:]
		case 2:
			l, n := binary.Uvarint(msg)
			if n <= 0 || uint64(len(msg)-n) < l {
				return "", errors.New("bad length")
			}
			v := msg[n : n+int(l)]
			msg = msg[n+int(l):]
			if field == want {
				out = string(v)
			}
		default:
			return "", fmt.Errorf("unsupported wire type %d", wire)
		}
	}
	return out, nil
}

// unaryCall makes one gRPC unary call over cleartext HTTP/2 on a unix socket
// and returns the response message.
func unaryCall(ctx context.Context, socket, path string, msg []byte) ([]byte, error) {
	tr := &http.Transport{
		Protocols: new(http.Protocols),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()

	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	frame = append(frame, msg...)
	u := url.URL{Scheme: "http", Host: "containerd", Path: path}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(frame))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %s", path, resp.Status)
	}
	// A failed call may answer with headers only ("Trailers-Only").
	status, message := resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
	if status == "" {
		status, message = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	}
	if status != "0" {
		if m, err := url.PathUnescape(message); err == nil {
			message = m
		}
		return nil, fmt.Errorf("%s: grpc status %s: %s", path, status, message)
	}
	if len(body) < 5 || body[0] != 0 {
		return nil, fmt.Errorf("%s: malformed response frame", path)
	}
	n := binary.BigEndian.Uint32(body[1:5])
	if uint64(len(body)-5) < uint64(n) {
		return nil, fmt.Errorf("%s: short response frame", path)
	}
	return body[5 : 5+n], nil
}
