package httpjson

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/duckraft/duckraft/api"
)

type request struct {
	Name string `json:"name"`
}

// decode runs Decode on body as a handler does.
func decode(body string, limit int64) (request, bool, *httptest.ResponseRecorder) {
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/v1/x", strings.NewReader(body))
	var v request
	ok := DecodeMax(w, r, &v, limit)
	return v, ok, w
}

func TestWellFormedBodyIsTaken(t *testing.T) {
	v, ok, w := decode(`{"name":"a"}`, MaxBody)
	if !ok || v.Name != "a" || w.Code != http.StatusOK {
		t.Fatalf("got %+v ok=%v status %d", v, ok, w.Code)
	}
}

func TestBadBodiesAreRefusedWith400(t *testing.T) {
	for name, body := range map[string]string{
		"not json":       `{"name":`,
		"unknown field":  `{"nmae":"a"}`,
		"two values":     `{"name":"a"}{"name":"b"}`,
		"wrong type":     `{"name":1}`,
		"empty":          ``,
		"over the limit": `{"name":"` + strings.Repeat("a", 100) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, ok, w := decode(body, 64)
			if ok {
				t.Fatal("taken")
			}
			if w.Code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", w.Code)
			}
			var eb api.ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || !strings.HasPrefix(eb.Error, "malformed request body") {
				t.Fatalf("body %q, want an api.ErrorBody saying the body is malformed", w.Body)
			}
		})
	}
}

func TestErrorCarriesStatusAndMessage(t *testing.T) {
	w := httptest.NewRecorder()
	Error(w, http.StatusConflict, errors.New("nothing has been deployed yet"))
	var eb api.ErrorBody
	if w.Code != http.StatusConflict || json.Unmarshal(w.Body.Bytes(), &eb) != nil || eb.Error != "nothing has been deployed yet" {
		t.Fatalf("status %d body %q", w.Code, w.Body)
	}
}

func TestStreamerWritesOneLinePerValue(t *testing.T) {
	w := httptest.NewRecorder()
	s := NewStreamer(w)
	if !w.Flushed {
		t.Fatal("the stream's header is not flushed at once: the client waits for the first line")
	}
	s.Send(api.LogLine{Node: "a", Text: "quack"})
	s.Raw(json.RawMessage(`{"node":"b","text":"quack"}`))
	s.Event(api.Event{Phase: "done"})
	lines := strings.Split(strings.TrimSpace(w.Body.String()), "\n")
	if len(lines) != 3 || w.Header().Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%q (%s), want three JSON lines", w.Body, w.Header().Get("Content-Type"))
	}
	var e api.Event
	if err := json.Unmarshal([]byte(lines[2]), &e); err != nil || e.Time.IsZero() {
		t.Fatalf("event line %q is not stamped with its time", lines[2])
	}
}
