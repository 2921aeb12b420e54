package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/duckraft/duckraft/api"
)

// Every answer carries the node's state index as it was when the answer began, whether the
// handler writes a status, a body or only flushes a stream.
func TestEveryAnswerCarriesTheStateIndex(t *testing.T) {
	var index uint64
	for _, c := range []struct {
		name   string
		handle func(http.ResponseWriter)
	}{
		{"status", func(w http.ResponseWriter) { w.WriteHeader(http.StatusConflict); index++; w.Write([]byte("{}")) }},
		{"body", func(w http.ResponseWriter) { w.Write([]byte("{}")); index++; w.Write([]byte("{}")) }},
		{"stream", func(w http.ResponseWriter) { w.(http.Flusher).Flush(); index++; w.Write([]byte("{}\n")) }},
	} {
		name := c.name
		rec := httptest.NewRecorder()
		index += 40
		want := strconv.FormatUint(index, 10)
		// The index moves on while the answer is written: the header keeps the first.
		c.handle(&indexWriter{ResponseWriter: rec, index: func() uint64 { return index }})
		if got := rec.Header().Get(api.IndexHeader); got != want {
			t.Errorf("%s: %s = %q, want %s, the index when the answer began", name, api.IndexHeader, got, want)
		}
		if name == "stream" && !rec.Flushed {
			t.Errorf("stream: the flush did not reach the connection")
		}
	}
}
