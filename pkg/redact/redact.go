// Package redact holds the rules for showing text where it may be read by
// someone other than its owner (logs, the admin API, error messages,
// peers): URL shows a URL without its secrets, Truncate bounds untrusted
// input quoted back.
//
// The URL policy: a URL is shown as scheme, host and path. User information
// (user name and password), the query (signatures, tokens, keys) and the
// fragment are dropped whole. No attempt is made to tell secret query keys
// from harmless ones: a list of names misses the next signing scheme.
//
// BitTorrent sources (pkg/btlink) follow the same policy. A torrent file's
// URL ("torrent+https://…") is a URL like any other. A magnet link is shown
// as what names its content, its info-hash, and its display name
// ("magnet:?xt=urn:btih:<hex>&dn=<name>"): its trackers (a private
// tracker's announce URL carries the user's passkey), web seeds and peers
// are dropped whole.
package redact

import (
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/damselfly/damselfly/pkg/btlink"
)

// Unparsable stands for a URL that does not parse: it is never shown, as
// the parser cannot say which part of it is a secret.
const Unparsable = "<unparsable url>"

// URL returns raw as it may be shown: without user information, query or
// fragment. The empty string stays empty. A magnet link is shown as its info-hash and display name.
func URL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Unparsable
	}
	if strings.EqualFold(u.Scheme, "magnet") {
		return magnet(raw)
	}
	if u.Opaque != "" {
		// "user:password@host" parses as scheme "user" with an opaque part.
		return u.Scheme + ":"
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return r.String()
}

// magnet returns a magnet link as it may be shown: its info-hash (v1, v2 or
// both, lowercase hex) and its display name (bounded with the link by
// btlink.MaxLinkLen), "magnet:?xt=urn:btih:<hex>&dn=<name>". Trackers, web
// seeds, peers and every other parameter are dropped. A link btlink cannot
// parse is shown as "magnet:" alone: which of its parts is a secret cannot
// be told.
func magnet(raw string) string {
	l, err := btlink.Parse(raw)
	if err != nil || l.TorrentURL != "" {
		return "magnet:"
	}
	var b strings.Builder
	b.WriteString("magnet:?")
	if l.InfoHash != "" {
		b.WriteString("xt=urn:btih:" + l.InfoHash)
	}
	if l.InfoHashV2 != "" {
		if l.InfoHash != "" {
			b.WriteByte('&')
		}
		b.WriteString("xt=urn:btmh:1220" + l.InfoHashV2)
	}
	if l.Name != "" {
		b.WriteString("&dn=" + url.QueryEscape(l.Name))
	}
	return b.String()
}

// urlInText finds URLs quoted in error texts: transport errors quote the
// URL they failed on, query and user information included; magnet links,
// trackers included.
var urlInText = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>]*|(?i:magnet):[^\s"'<>]*`)

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
