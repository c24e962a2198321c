package registrysource

import "strings"

// The distribution reference grammar (github.com/distribution/reference),
// checked by hand: ValidateRepository and ValidateReference run on every
// manifest request of the mirror and the registry cache, where the regular
// expressions cost more than the rest of a cache hit. A fuzz test keeps them
// equal to distribution/reference's regular expressions.
//
//	path            := path-component ['/' path-component]*   (at most 255 bytes)
//	path-component  := alpha-numeric [separator alpha-numeric]*
//	alpha-numeric   := /[a-z0-9]+/
//	separator       := /[._]|__|[-]+/
//	tag             := /[\w][\w.-]{0,127}/
//	sha256 digest   := "sha256:" /[a-f0-9]{64}/

// maxRepositoryLength is reference.RepositoryNameTotalLengthMax.
const maxRepositoryLength = 255

// validRepository reports whether name is a repository path of the
// distribution grammar, such as "library/alpine": lowercase path components
// separated by "/", no registry host, at most 255 bytes.
func validRepository(name string) bool {
	if name == "" || len(name) > maxRepositoryLength {
		return false
	}
	// prev is the class of the previous byte: 'a' alphanumeric, '/' a
	// component separator, '.' or '_' (with run counting the underscores)
	// or '-' a separator inside a component.
	prev, run := byte('/'), 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
			prev, run = 'a', 0
		case c == '/':
			if prev != 'a' {
				return false
			}
			prev = '/'
		case c == '.':
			if prev != 'a' {
				return false
			}
			prev = '.'
		case c == '_':
			switch {
			case prev == 'a':
				prev, run = '_', 1
			case prev == '_' && run == 1:
				run = 2
			default:
				return false
			}
		case c == '-':
			if prev != 'a' && prev != '-' {
				return false
			}
			prev = '-'
		default:
			return false
		}
	}
	return prev == 'a'
}

// validTag reports whether tag is a tag of the distribution grammar.
func validTag(tag string) bool {
	if tag == "" || len(tag) > 128 || !isWord(tag[0]) {
		return false
	}
	for i := 1; i < len(tag); i++ {
		if c := tag[i]; !isWord(c) && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func isWord(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_'
}

// validSHA256 reports whether d is a well-formed sha256 digest:
// "sha256:" and 64 lowercase hexadecimal digits.
func validSHA256(d string) bool {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
