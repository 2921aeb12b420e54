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
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			if err := upg.Upgrade(); err != nil {
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
