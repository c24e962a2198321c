// Package redact holds the rules for showing text where it may be read by
// someone other than its owner (logs, the admin API, error messages,
// peers): URL shows a URL without its secrets, Truncate bounds untrusted
// input quoted back.
//
// The URL policy: a URL is shown as scheme, host and path. User information
// (user name and password), the query (signatures, tokens, keys) and the
// fragment are dropped whole. No attempt is made to tell secret query keys
// from harmless ones: a list of names misses the next signing scheme.
package redact

import (
	"net/url"
	"regexp"
	"unicode/utf8"
)

// Unparsable stands for a URL that does not parse: it is never shown, as
// the parser cannot say which part of it is a secret.
const Unparsable = "<unparsable url>"

// URL returns raw as it may be shown: without user information, query or
// fragment. The empty string stays empty.
func URL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Unparsable
	}
	if u.Opaque != "" {
		// "user:password@host" parses as scheme "user" with an opaque part.
		return u.Scheme + ":"
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return r.String()
}

// urlInText finds URLs quoted in error texts: transport errors quote the
// URL they failed on, query and user information included.
var urlInText = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>]*`)

// Text returns s with every URL in it redacted as by URL.
func Text(s string) string {
	return urlInText.ReplaceAllStringFunc(s, URL)
}

// Error returns err's text with every URL in it redacted as by URL; "" for nil.
func Error(err error) string {
	if err == nil {
		return ""
	}
	return Text(err.Error())
}

// MaxQuoted is the most bytes of untrusted input Truncate keeps.
const MaxQuoted = 200

// Truncate bounds untrusted input quoted in an error or a log line to
// MaxQuoted bytes (cut at a character boundary) followed by "...", so that
// a client cannot make an answer or a log line as large as its request.
func Truncate(s string) string {
	if len(s) <= MaxQuoted {
		return s
	}
	n := MaxQuoted
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
