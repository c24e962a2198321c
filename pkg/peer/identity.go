package peer

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
)

// NewID returns a fresh peer ID for a peer of the given kind ("dfget",
// "dfdaemon"): kind, host name and a random suffix, within the
// [A-Za-z0-9._-]{1,128} the peer API accepts.
func NewID(kind string) string {
	host, _ := os.Hostname()
	var b strings.Builder
	for _, c := range host {
		if b.Len() >= 40 {
			break
		}
		if c == '.' || c == '_' || c == '-' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') {
			b.WriteRune(c)
		}
	}
	name := b.String()
	if name == "" {
		name = "host"
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	return kind + "-" + name + "-" + hex.EncodeToString(r[:])
}

// AdvertiseIP returns the IP other peers reach this one at: explicit when
// set, else the host of peerListen when it names one, else the local
// address the OS would use towards node (a UDP "dial" sends no packet).
func AdvertiseIP(explicit, peerListen, node string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if host, _, err := net.SplitHostPort(peerListen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			return host, nil
		}
	}
	conn, err := net.Dial("udp", node)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}
