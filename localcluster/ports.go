package localcluster

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
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
