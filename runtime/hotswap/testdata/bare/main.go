// Command bare is the baseline for BenchmarkSwap: the plain tableflip HTTP
// server from tableflip's own example, which on SIGHUP re-executes itself
// and drains with http.Server.Shutdown. It keeps no state and does nothing
// about keep-alive connections, so it shows what the SDK's swap costs.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	upg, err := tableflip.New(tableflip.Options{PIDFile: os.Getenv("DUCK_PIDFILE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
	defer upg.Stop()
	// Two fixes to the example so a benchmark can swap back to back: catch
	// SIGHUP before Ready writes the PID file, and wait for the previous
	// generation to exit (tableflip refuses to upgrade before, and learns
	// of the exit a moment after WaitForParent does). Neither is on the
	// measured path from SIGHUP to the old process gone.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	go func() {
		for range sig {
			upg.WaitForParent(context.Background())
			err := upg.Upgrade()
			for try := 0; err != nil && err.Error() == "parent hasn't exited" && try < 100; try++ {
				time.Sleep(time.Millisecond)
				err = upg.Upgrade()
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "bare: upgrade failed:", err)
			}
		}
	}()
	ln, err := upg.Listen("tcp", os.Getenv("DUCK_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"count":0}`)
	})}
	go srv.Serve(ln)
	if err := upg.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
	<-upg.Exit()
	time.AfterFunc(30*time.Second, func() { os.Exit(1) })
	srv.Shutdown(context.Background())
}
