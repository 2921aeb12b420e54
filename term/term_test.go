package term

import "testing"

func TestSafe(t *testing.T) {
	for in, want := range map[string]string{
		"quack":                 "quack",
		"count=3\tok":           "count=3\tok",
		"two\nlines":            "two\nlines",
		"\x1b]0;pwned\x07title": `\x1b]0;pwned\x07title`,
		"\x1b[2J\x1b[Hclear":    `\x1b[2J\x1b[Hclear`,
		"back\rover":            `back\x0dover`,
		"c1 \u009b31m csi":      `c1 \u009b31m csi`,
		"bidi \u202eevil":       `bidi \u202eevil`,
		"not utf8 \xff\xfe":     `not utf8 \xff\xfe`,
		"canard 鴨 🦆 naïve":      "canard 鴨 🦆 naïve",
		"del\x7f":               `del\x7f`,
	} {
		if got := Safe(in); got != want {
			t.Errorf("Safe(%q) = %q, want %q", in, got, want)
		}
	}
}
