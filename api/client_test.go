package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/duckraft/duckraft/wire"
)

// --addr given a duck's address (plain HTTP) said only "http: server gave HTTP response to HTTPS
// client"; it now says what the address is likely to be and where the right one is listed.
func TestADucksAddressIsToldApartFromANodes(t *testing.T) {
	duck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer duck.Close()
	id, err := wire.FromCookie("duck")
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(duck.URL, "http://")
	err = NewClient(id).Do(context.Background(), addr, http.MethodGet, "/v1/ping", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "answers plain HTTP, not as a duckraft node: is it a duck's address?") {
		t.Fatalf("a plain HTTP address: %v", err)
	}
}
