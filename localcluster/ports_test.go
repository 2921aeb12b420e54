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

// Addresses handed out before their nodes bind them are never handed out twice: two nodes
// started at once were given the same port, and one failed on "address already in use". Here
// none is bound, as for nodes still starting, and a thousand picks must all differ (at random
// they meet with a chance of about 1 - e^(-1000²/45,000): near certainty).
func TestLoopbackAddrsHandedOutAreNeverRepeated(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		addr, err := loopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
	}
}
