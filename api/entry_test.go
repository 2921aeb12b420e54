package api

import (
	"encoding/json"
	"testing"
)

// A peer's log entry crosses the API as it was sent: the node in between reads only its op.
func TestEntryCrossesAsItWasSent(t *testing.T) {
	sent := `{"op":"report","n":2,"name":"b","phase":"running","build":{"sum":"ab"}}`
	var e Entry
	if err := json.Unmarshal([]byte(sent), &e); err != nil {
		t.Fatal(err)
	}
	if e.Op() != "report" {
		t.Fatalf("op %q, want report", e.Op())
	}
	out, err := json.Marshal(struct{ E Entry }{e})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"E":` + sent + `}`; string(out) != want {
		t.Fatalf("sent on as %s, want %s", out, want)
	}
	for _, bad := range []string{`"report"`, `[1]`, `{"op":3}`} {
		if op := Entry(bad).Op(); op != "" {
			t.Errorf("%s: op %q, want none", bad, op)
		}
	}
}
