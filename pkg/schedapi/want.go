package schedapi

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Query parameters of RoutePieces that say what a poll asks for first.
const (
	// QueryWant lists the pieces a reader on the peer needs now, as
	// ascending ranges of piece indexes: "3-5,9,12-40". The scheduler
	// assigns them before any other piece, and has the CDN fetch those it
	// does not have yet from the source first, out of order.
	QueryWant = "want"
	// QueryBackground caps the assignments of pieces not in QueryWant (the
	// background fill of the rest, "prefetch"): 0 asks for wanted pieces
	// only. Absent: no cap below the poll's max.
	QueryBackground = "bg"
)

// MaxWant is the most pieces one poll may want.
const MaxWant = 256

// maxWantQuery bounds the length of a want query value parsed.
const maxWantQuery = 4096

// ErrWant: a want list is malformed or too long.
var ErrWant = errors.New("malformed want list")

// Want is what a poll asks for first.
type Want struct {
	// Pieces are the piece indexes readers need now, ascending, distinct,
	// at most MaxWant.
	Pieces []int
	// Background caps the assignments of other pieces; < 0: no cap.
	Background int
}

// NoWant asks for any piece, rarest first: a poll without wants.
var NoWant = Want{Background: -1}

// FormatWant renders ascending distinct piece indexes as ranges ("3-5,9").
func FormatWant(pieces []int) string {
	var b strings.Builder
	for k := 0; k < len(pieces); {
		j := k
		for j+1 < len(pieces) && pieces[j+1] == pieces[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(pieces[k]))
		if j > k {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(pieces[j]))
		}
		k = j + 1
	}
	return b.String()
}

// ParseWant parses a want list written by FormatWant: ascending,
// non-overlapping ranges of non-negative piece indexes, at most MaxWant
// pieces in all. Errors wrap ErrWant.
func ParseWant(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > maxWantQuery {
		return nil, fmt.Errorf("want list of %d bytes: %w", len(s), ErrWant)
	}
	var out []int
	next := 0 // the lowest index the next range may start at
	for part := range strings.SplitSeq(s, ",") {
		a, b, isRange := strings.Cut(part, "-")
		first, err := parseIndex(a)
		if err != nil {
			return nil, err
		}
		last := first
		if isRange {
			if last, err = parseIndex(b); err != nil {
				return nil, err
			}
		}
		if first < next || last < first {
			return nil, fmt.Errorf("want %q: ranges must ascend: %w", part, ErrWant)
		}
		if len(out)+last-first+1 > MaxWant {
			return nil, fmt.Errorf("want list: more than %d pieces: %w", MaxWant, ErrWant)
		}
		for i := first; i <= last; i++ {
			out = append(out, i)
		}
		next = last + 1
	}
	return out, nil
}

func parseIndex(s string) (int, error) {
	if s == "" || len(s) > 9 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("want: piece %q: %w", s, ErrWant)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("want: piece %q: %w", s, ErrWant)
	}
	return n, nil
}

// Valid reports whether w's pieces are ascending, distinct, non-negative
// and at most MaxWant.
func (w Want) Valid() bool {
	return len(w.Pieces) <= MaxWant && slices.IsSorted(w.Pieces) &&
		(len(w.Pieces) == 0 || w.Pieces[0] >= 0) && len(slices.Compact(slices.Clone(w.Pieces))) == len(w.Pieces)
}
