package agent

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/consensus"
)

func placeOnly(ch consensus.Change) bool {
	switch ch.(type) {
	case consensus.Place, consensus.Unplace:
		return true
	}
	return false
}

// A peer's route takes only the changes it is for: a placement route that would commit a
// member's registration, or a round of grants, refuses it as a bad request.
func TestPeerRouteTakesOnlyItsChanges(t *testing.T) {
	for entry, want := range map[string]string{
		`{"op":"register","member":{"name":"evil"}}`:     `"register" does not go through /v1/place`,
		`{"op":"steps","steps":[{"op":"grant","n":1}]}`:  `"steps" does not go through /v1/place`,
		`{"op":"teleport"}`:                              `not a log entry: unknown operation "teleport"`,
		`{"op":"steps","steps":[{"op":"register"}]}`:     `not a log entry: step 1 of 1`,
		`{"op":"place","placement":{"node":"a","id":"x"`: `not a log entry`,
	} {
		_, err := peerChange(api.Entry(entry), "/v1/place", placeOnly)
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(ae.Message, want) {
			t.Errorf("%s: %v, want a 400 saying %q", entry, err, want)
		}
	}
	ch, err := peerChange(api.Entry(`{"op":"unplace","name":"a/duck-1"}`), "/v1/place", placeOnly)
	if err != nil || ch != (consensus.Unplace{Key: "a/duck-1"}) {
		t.Fatalf("an unplace on the place route: %#v, %v", ch, err)
	}
}
