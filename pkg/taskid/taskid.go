// Package taskid derives and validates task IDs.
//
// A task whose content digest is known (an OCI blob, dfget --digest) is named
// by that digest, "sha256:<64 hex>", whatever URL, mirror or token it came
// through. Any other task is named by 64 lowercase hex characters: the sha256
// of its normalised URL (query keys named by the filter dropped, the rest
// sorted) and its identifier. Nothing else is a task ID, so a task ID is safe
// to use in a URL path or, once validated, in a file name.
package taskid

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/redact"
)

// ErrInvalid is returned for a string that is not a task ID.
var ErrInvalid = errors.New("invalid task id")

// ForDigest returns the ID of the task that downloads content with digest d.
func ForDigest(d digest.Digest) (string, error) {
	// Validate first: Algorithm panics on a string without ':'.
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("task digest %q: %w", redact.Truncate(string(d)), ErrInvalid)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("task digest %q: only sha256 is supported: %w", redact.Truncate(string(d)), ErrInvalid)
	}
	return d.String(), nil
}

// ForURL returns the ID of the task that downloads rawURL. Query keys listed
// in filter (for example expiring signatures) are dropped first, so that two
// URLs differing only in them share one task; identifier separates tasks that
// share a URL but not content.
func ForURL(rawURL string, filter []string, identifier string) (string, error) {
	norm, err := Normalize(rawURL, filter)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(norm + "\n" + identifier))
	return hex.EncodeToString(sum[:]), nil
}

// Normalize returns rawURL with its scheme and host lowercased, default ports
// and the fragment removed, the query keys in filter dropped and the
// remaining query sorted.
func Normalize(rawURL string, filter []string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("parse url: %w", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("url %q: scheme must be http or https", rawURL)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", fmt.Errorf("url %q: no host", rawURL)
	}
	port := u.Port()
	if (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	u.Host = host
	u.Fragment, u.RawFragment = "", ""
	u.User = nil
	q := u.Query()
	for _, k := range filter {
		q.Del(k)
	}
	u.RawQuery = q.Encode() // Encode sorts by key.
	return u.String(), nil
}

// Validate reports whether id is a task ID: "sha256:" followed by 64
// lowercase hex characters, or 64 lowercase hex characters alone.
func Validate(id string) error {
	hexPart := strings.TrimPrefix(id, "sha256:")
	if len(hexPart) != 64 {
		return fmt.Errorf("%q: %w", redact.Truncate(id), ErrInvalid)
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%q: %w", redact.Truncate(id), ErrInvalid)
		}
	}
	return nil
}

// Digest returns the content digest a task ID names, if it names one.
func Digest(id string) (digest.Digest, bool) {
	if strings.HasPrefix(id, "sha256:") && Validate(id) == nil {
		return digest.Digest(id), true
	}
	return "", false
}

// FileName returns a name for the task that is safe as one path element: the
// ID with ':' replaced by '-'. It panics on an invalid ID, which callers must
// have rejected with Validate.
func FileName(id string) string {
	if err := Validate(id); err != nil {
		panic(err)
	}
	return strings.Replace(id, ":", "-", 1)
}

// ParseFilter splits a --filter value ("k1&k2") into query keys.
func ParseFilter(s string) []string {
	var keys []string
	for k := range strings.SplitSeq(s, "&") {
		if k = strings.TrimSpace(k); k != "" && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}
