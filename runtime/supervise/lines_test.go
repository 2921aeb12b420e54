package supervise

import (
	"fmt"
	"testing"
	"time"
)

// Every duck's last n lines, not the last n of all of them together: `logs -n 1` with a chatty
// duck and a quiet one showed only the chatty one's (found by trying it from outside).
func TestRecentOfEveryDuckIsEachDucksLastLines(t *testing.T) {
	h := newHub(nil)
	t0 := time.Now()
	h.publish(Line{Duck: "quiet", Text: "hello", Time: t0})
	for i := range 5 {
		h.publish(Line{Duck: "chatty", Text: fmt.Sprint("quack ", i), Time: t0.Add(time.Duration(i+1) * time.Millisecond)})
	}
	got := h.recent("", 1)
	if len(got) != 2 || got[0].Duck != "quiet" || got[1].Duck != "chatty" || got[1].Text != "quack 4" {
		t.Fatalf("last line of each duck: %+v", got)
	}
	if got := h.recent("", 2); len(got) != 3 || got[1].Text != "quack 3" {
		t.Fatalf("last two lines of each duck, in the order printed: %+v", got)
	}
	if got := h.recent("", 0); len(got) != 0 {
		t.Fatalf("no recent lines asked (-n 0): %+v", got)
	}
}
