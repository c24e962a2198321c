package piece

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/bits"
)

// Set is a growable set of piece indices, stored as a bitmap. The zero value
// is an empty set. A Set is not safe for concurrent use.
type Set struct {
	words []uint64
}

// NewSet returns an empty set sized for n pieces.
func NewSet(n int) *Set {
	return &Set{words: make([]uint64, (n+63)/64)}
}

// Add puts piece i in the set.
func (s *Set) Add(i int) {
	w := i / 64
	if w >= len(s.words) {
		s.words = append(s.words, make([]uint64, w+1-len(s.words))...)
	}
	s.words[w] |= 1 << (uint(i) % 64)
}

// Remove takes piece i out of the set.
func (s *Set) Remove(i int) {
	if w := i / 64; w < len(s.words) {
		s.words[w] &^= 1 << (uint(i) % 64)
	}
}

// Has reports whether piece i is in the set.
func (s *Set) Has(i int) bool {
	if s == nil || i < 0 {
		return false
	}
	w := i / 64
	return w < len(s.words) && s.words[w]&(1<<(uint(i)%64)) != 0
}

// Len returns the number of pieces in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	n := 0
	for _, w := range s.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// HasAll reports whether the set holds every piece in [0, n).
func (s *Set) HasAll(n int) bool {
	for i := range n {
		if !s.Has(i) {
			return false
		}
	}
	return true
}

// HasRange reports whether every piece in [from, to] is in the set.
func (s *Set) HasRange(from, to int) bool {
	for i := from; i <= to; i++ {
		if !s.Has(i) {
			return false
		}
	}
	return true
}

// Indices returns the pieces in the set in increasing order.
func (s *Set) Indices() []int {
	if s == nil {
		return nil
	}
	out := make([]int, 0, s.Len())
	for wi, w := range s.words {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, wi*64+b)
			w &^= 1 << uint(b)
		}
	}
	return out
}

// Clone returns an independent copy of the set.
func (s *Set) Clone() *Set {
	if s == nil {
		return &Set{}
	}
	return &Set{words: append([]uint64(nil), s.words...)}
}

// MarshalJSON encodes the set as a base64 little-endian bitmap, so that a
// 1,000-piece set costs about 170 bytes on the wire.
func (s *Set) MarshalJSON() ([]byte, error) {
	if s == nil {
		return []byte(`""`), nil
	}
	buf := make([]byte, 0, len(s.words)*8)
	for _, w := range s.words {
		for b := range 8 {
			buf = append(buf, byte(w>>(8*b)))
		}
	}
	for len(buf) > 0 && buf[len(buf)-1] == 0 {
		buf = buf[:len(buf)-1]
	}
	return json.Marshal(base64.StdEncoding.EncodeToString(buf))
}

// maxSetBytes bounds a decoded set: enough for a million pieces.
const maxSetBytes = 1 << 17

// UnmarshalJSON decodes a set written by MarshalJSON.
func (s *Set) UnmarshalJSON(data []byte) error {
	var enc string
	if err := json.Unmarshal(data, &enc); err != nil {
		return fmt.Errorf("piece set: %w", err)
	}
	if base64.StdEncoding.DecodedLen(len(enc)) > maxSetBytes {
		return fmt.Errorf("piece set: larger than %d bytes", maxSetBytes)
	}
	buf, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return fmt.Errorf("piece set: %w", err)
	}
	s.words = make([]uint64, (len(buf)+7)/8)
	for i, b := range buf {
		s.words[i/8] |= uint64(b) << (8 * (uint(i) % 8))
	}
	return nil
}
