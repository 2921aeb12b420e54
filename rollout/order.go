package rollout

import (
	"slices"
	"strings"
)

// Order sorts node names the way a person numbers them: n2 before n10, then by text. Every node
// computes the same order from the same names.
func Order(names []string) []string {
	out := slices.Clone(names)
	slices.SortFunc(out, CompareNames)
	return out
}

// CompareNames is Order's comparison, for every listing of nodes and ducks, so that `members`,
// `ducks` and `status` show them in the order a rollout takes them.
func CompareNames(a, b string) int {
	if c := compareNatural(a, b); c != 0 {
		return c
	}
	return strings.Compare(a, b) // n01 and n1: still one order on every node
}

// compareNatural compares runs of digits by their value and everything else as text.
func compareNatural(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digits(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}
