// Package term makes text from programs we do not trust, a duck's output or a build's, safe to
// print on an operator's terminal: escape sequences can retitle the window, rewrite what is on
// screen, hide a line, or on some terminals answer with input.
package term

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Safe returns s with every control character except newline and tab written out as a Go
// escape (\x1b, \u009b), as are the bidirectional overrides that reorder what a line seems to say
// and bytes that are not UTF-8. Printable text, in any script, is left alone.
func Safe(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case escaped(r):
			if r < 0x80 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || escaped(r) {
			return true
		}
		i += size
	}
	return false
}

func escaped(r rune) bool {
	switch {
	case r == '\n', r == '\t':
		return false
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}
