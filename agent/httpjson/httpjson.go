// Package httpjson is how the node's API reads a request body and writes an answer: one JSON
// value in, refused with a 400 that says what is wrong when it is not exactly that; one JSON
// value out, or an api.ErrorBody with the status; or a stream of JSON lines, each flushed at once
// so the CLI shows it as it comes.
package httpjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/duckraft/duckraft/api"
)

// MaxBody bounds a request body; nothing the API takes today comes near it, except a bundle,
// which has its own bound (see DecodeMax).
const MaxBody = 1 << 20

// Write answers v as JSON.
func Write(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Error answers err with status; the client (api.Client) turns the body back into an
// *api.APIError with the same status and message.
func Error(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.ErrorBody{Error: err.Error()})
}

// Decode reads a JSON body of at most MaxBody bytes into v, answering 400 with what is wrong
// when it cannot; false means the answer has been written.
func Decode(w http.ResponseWriter, r *http.Request, v any) bool {
	return DecodeMax(w, r, v, MaxBody)
}

// DecodeMax is Decode for a body that may be up to limit bytes. Unknown fields are refused, so a
// misspelt field is an error rather than a default silently taken.
func DecodeMax(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		Error(w, http.StatusBadRequest, fmt.Errorf("malformed request body: %v", err))
		return false
	}
	if dec.More() {
		Error(w, http.StatusBadRequest, errors.New("malformed request body: more than one JSON value"))
		return false
	}
	return true
}

// Streamer writes values as lines of JSON, flushing each so the client sees it at once.
type Streamer struct {
	w http.ResponseWriter
	f http.Flusher
}

// NewStreamer answers 200 with a stream of JSON lines (application/x-ndjson).
func NewStreamer(w http.ResponseWriter) *Streamer {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	f, _ := w.(http.Flusher)
	s := &Streamer{w: w, f: f}
	s.flush()
	return s
}

// Send writes v as one line.
func (s *Streamer) Send(v any) {
	json.NewEncoder(s.w).Encode(v)
	s.flush()
}

// Raw writes a line already encoded (relayed from another node) as it is.
func (s *Streamer) Raw(line json.RawMessage) {
	s.w.Write(append(line, '\n'))
	s.flush()
}

// Event sends e stamped with the time now.
func (s *Streamer) Event(e api.Event) {
	e.Time = time.Now().UTC()
	s.Send(e)
}

func (s *Streamer) flush() {
	if s.f != nil {
		s.f.Flush()
	}
}
