package schedapi

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestWantRoundTrip(t *testing.T) {
	for _, pieces := range [][]int{nil, {0}, {3, 4, 5, 9}, {1, 3, 5}, {0, 1, 2, 100, 101}} {
		s := FormatWant(pieces)
		got, err := ParseWant(s)
		if err != nil {
			t.Fatalf("ParseWant(%q): %v", s, err)
		}
		if !slices.Equal(got, pieces) {
			t.Fatalf("%v -> %q -> %v", pieces, s, got)
		}
	}
	if s := FormatWant([]int{3, 4, 5, 9}); s != "3-5,9" {
		t.Fatalf("FormatWant = %q", s)
	}
}

func TestParseWantRejects(t *testing.T) {
	for _, s := range []string{"-1", "a", "3-", "5-3", "5,3", "3,3", "1-2,2", " 1", "1,,2",
		"0-256", strings.Repeat("1", 10), strings.Repeat("9,", 3000)} {
		if _, err := ParseWant(s); !errors.Is(err, ErrWant) {
			t.Errorf("ParseWant(%q) = %v, want ErrWant", s, err)
		}
	}
	if got, err := ParseWant("0-255"); err != nil || len(got) != MaxWant {
		t.Fatalf("ParseWant(0-255) = %d pieces, %v", len(got), err)
	}
}

func TestWantValid(t *testing.T) {
	if !(Want{Pieces: []int{1, 2, 7}}).Valid() || (Want{Pieces: []int{2, 1}}).Valid() || (Want{Pieces: []int{1, 1}}).Valid() || (Want{Pieces: []int{-1}}).Valid() {
		t.Fatal("Valid")
	}
}
