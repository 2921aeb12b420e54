package hotswap_test

import (
	"fmt"
	"net/http"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

// A handler that streams for two seconds counts its request first, then detaches it: a swap
// that begins meanwhile hands the state over at once, the stream goes on from the old
// generation, and the new one serves every other client.
func ExampleDetach() {
	type state struct{ Streams int }
	hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /ticks", func(w http.ResponseWriter, r *http.Request) {
			var n int
			d.State.Update(func(s *state) { s.Streams++; n = s.Streams })
			hotswap.Detach(r) // no Update from here on
			for i := range 10 {
				fmt.Fprintf(w, "stream %d, tick %d from %s\n", n, i, d.Version)
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		})
		return d.Serve(mux)
	})
}
