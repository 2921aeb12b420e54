package localcluster

import (
	"net"
	"strconv"
	"testing"
)

// Nodes' ports lie below the ephemeral range, where no outgoing connection takes them while a
// node restarts, and are free to bind.
func TestLoopbackAddrIsFreeAndBelowTheEphemeralRange(t *testing.T) {
	for range 20 {
		addr, err := loopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if port <= 0 || port >= ephemeralLow() {
			t.Fatalf("port %d is not below the ephemeral range (from %d)", port, ephemeralLow())
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s is not free: %v", addr, err)
		}
		l.Close()
	}
}
