package schedapi

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/damselfly/damselfly/pkg/redact"
)

// The identity rule of a peer, shared by the engine that chooses its
// identity, the client that sends it and the supernode that receives it.
const (
	// MaxPeerIDLen is the longest peer ID.
	MaxPeerIDLen = 128
	// MaxPeerAddrLen is the longest peer address.
	MaxPeerAddrLen = 512
)

// ErrInvalidPeer is wrapped by every error of ValidatePeerID,
// ValidatePeerAddr and Peer.Validate.
var ErrInvalidPeer = errors.New("invalid peer")

// ValidatePeerID checks a peer ID: 1 to MaxPeerIDLen characters of
// [A-Za-z0-9._-]. It is safe in a path segment and a log line.
func ValidatePeerID(id string) error {
	if id == "" || len(id) > MaxPeerIDLen {
		return fmt.Errorf("peer id: must be 1 to %d characters: %w", MaxPeerIDLen, ErrInvalidPeer)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("peer id %q: only [A-Za-z0-9._-] are allowed: %w", redact.Truncate(id), ErrInvalidPeer)
		}
	}
	return nil
}

// ValidatePeerAddr checks the address of a peer's upload server: host:port
// with a host and a numeric port from 1 to 65535, at most MaxPeerAddrLen
// bytes.
func ValidatePeerAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || len(addr) > MaxPeerAddrLen {
		return fmt.Errorf("peer addr %q: must be host:port of the upload server: %w", redact.Truncate(addr), ErrInvalidPeer)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("peer addr %q: bad port: %w", redact.Truncate(addr), ErrInvalidPeer)
	}
	return nil
}

// Validate checks p's ID, address and download rate.
func (p Peer) Validate() error {
	if err := ValidatePeerID(p.ID); err != nil {
		return err
	}
	if err := ValidatePeerAddr(p.Addr); err != nil {
		return err
	}
	if p.DownloadRate < 0 {
		return fmt.Errorf("peer downloadRate %d: must not be negative: %w", p.DownloadRate, ErrInvalidPeer)
	}
	return nil
}
