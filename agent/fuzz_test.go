package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/consensus"
)

// requestTypes are the bodies the API decodes, each made fresh for one request.
var requestTypes = []func() any{
	func() any { return new(api.ConnectRequest) },
	func() any { return new(consensus.Member) },
	func() any { return new(api.NameRequest) },
	func() any { return new(api.SpawnRequest) },
	func() any { return new(api.StopRequest) },
	func() any { return new(api.RolloutAction) },
	func() any { return new(api.CommitRequest) },
	func() any { return new(api.Entry) },
}

// decodeBody runs decode on body the way a handler does and returns what it said.
func decodeBody(body []byte, v any) (bool, *httptest.ResponseRecorder) {
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/v1/fuzz", bytes.NewReader(body))
	return httpjson.Decode(w, r, v), w
}

// FuzzDecodeRequest feeds arbitrary bodies to the API's request decoding for every request type
// it takes. It must never panic; a body it refuses gets a 400 whose JSON says the body is
// malformed and carries no stack trace; a body it takes is exactly what the standard decoder,
// refusing unknown fields, makes of it.
func FuzzDecodeRequest(f *testing.F) {
	for i := range requestTypes {
		for _, body := range []string{
			`{}`, `{"addr":"127.0.0.1:7001"}`, `{"name":"a","raft_addr":"127.0.0.1:7101","api_addr":"127.0.0.1:7001"}`,
			`{"addr":`, `{"addr": 7}`, `{"nonsense": true}`, "\x00\x01", `null`, `[]`, `"a"`,
			`{"env":["DUCK_INTERVAL=200ms"],"on":"b","version":"d9bc096c18bb"}`,
			`{"action":"undo","to":-1}`, `{"bundle":"not base64!","canary":true}`,
			`{"op":"report","n":2,"name":"a","phase":"running","time":"2026-11-25T12:00:00Z"}`,
			`{"name":"a"} {"name":"b"}`, `{"name":"a","name":"b"}`, `{"NAME":"a"}`,
		} {
			f.Add(uint8(i), []byte(body))
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		mk := requestTypes[int(kind)%len(requestTypes)]
		v := mk()
		ok, w := decodeBody(body, v)

		// The reference: the standard library's decoder with the same rules, no HTTP around it.
		want := mk()
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		wantErr := dec.Decode(want)
		if wantErr == nil && dec.More() {
			wantErr = errors.New("more than one JSON value") // one request, one value
		}
		if len(body) <= httpjson.MaxBody && ok != (wantErr == nil) {
			t.Fatalf("%T from %q: decode said %v, the JSON decoder %v", v, body, ok, wantErr)
		}

		if ok {
			if w.Code != http.StatusOK || w.Body.Len() != 0 {
				t.Fatalf("%T from %q decoded, yet decode wrote %d %q", v, body, w.Code, w.Body)
			}
			if !reflect.DeepEqual(v, want) {
				t.Fatalf("%T from %q: decode made %+v, the JSON decoder %+v", v, body, v, want)
			}
			return
		}
		if w.Code != http.StatusBadRequest {
			t.Fatalf("%T from %q refused with %d, want 400", v, body, w.Code)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%T from %q: 400 with Content-Type %q, want application/json", v, body, ct)
		}
		raw := w.Body.String()
		var e map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || len(e) != 1 {
			t.Fatalf("%T from %q: 400 body %q is not {\"error\": ...} (%v)", v, body, raw, err)
		}
		if !strings.HasPrefix(e["error"], "malformed request body: ") {
			t.Fatalf("%T from %q: error %q does not say the body is malformed", v, body, e["error"])
		}
		for _, leak := range []string{"goroutine ", "panic", ".go:"} {
			if strings.Contains(raw, leak) {
				t.Fatalf("%T from %q: 400 body has %q in it: %s", v, body, leak, raw)
			}
		}
	})
}

// A body past httpjson.MaxBody is refused with a 400 before it is all read, even when it starts well.
func TestOversizedBodyGets400(t *testing.T) {
	body := []byte(`{"name":"` + strings.Repeat("a", httpjson.MaxBody) + `"}`)
	for _, mk := range requestTypes {
		v := mk()
		ok, w := decodeBody(body, v)
		if ok || w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "malformed request body: http: request body too large") {
			t.Fatalf("%T from a %d-byte body: decoded %v, %d %s", v, len(body), ok, w.Code, w.Body)
		}
	}
}
