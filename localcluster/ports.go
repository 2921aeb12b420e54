package localcluster

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// loopbackAddr is a free 127.0.0.1 address whose port lies below the kernel's ephemeral range.
//
// A node remembers its ports and a restarted one binds them again. A port the kernel picked
// for a listener (":0") comes from the ephemeral range, which is also where every outgoing
// connection on the machine takes its source port: while the node is down, a client's
// connection can take its port and the restart fails with "address already in use". Below the
// range only an explicit bind can take it.
func loopbackAddr() (string, error) {
	lo := ephemeralLow()
	const floor = 10000
	if lo-floor < 1000 {
		return "127.0.0.1:0", nil // no room below the range: let the kernel pick
	}
	for range 100 {
		port := floor + rand.IntN(lo-floor)
		if !reserve(port) {
			continue // given to a node of this process already, which may not have bound it yet
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken: try another
		}
		l.Close()
		return l.Addr().String(), nil
	}
	return "", fmt.Errorf("no free loopback port between %d and %d after 100 tries", floor, lo)
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's default when it
// cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return lo
}

// given holds the ports loopbackAddr handed out in this process. A port is free when picked and
// bound by its node only once that node has started: two nodes started at once could be given
// the same port, and the second failed on "address already in use" (a hundred-node bench run
// did). A port is handed out once.
var given struct {
	sync.Mutex
	ports map[int]bool
}

// reserve marks port as handed out, false if it was already.
func reserve(port int) bool {
	given.Lock()
	defer given.Unlock()
	if given.ports[port] {
		return false
	}
	if given.ports == nil {
		given.ports = map[int]bool{}
	}
	given.ports[port] = true
	return true
}
