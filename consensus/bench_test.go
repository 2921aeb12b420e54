package consensus_test

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/wire"
)

// BenchmarkCommit measures how long the leader of a three-node cluster in
// this process takes to commit one small command (Node.Apply returns once a
// majority has it in its bbolt log and the leader's FSM has applied it),
// over real loopback TCP, each node on its own bbolt file.
//
//   - wire-tls: consensus.Open as a node runs it, Raft over the cookie-keyed
//     TLS 1.3 of package wire.
//   - raft-tcp: the baseline, the same cluster on raft's plain
//     raft.NewTCPTransport (no TLS).
//   - side-by-side: both clusters at once, one commit on each per
//     iteration in alternating order, so the two see the same noise; it
//     reports the ratio wire-tls/raft-tcp of the medians.
//
// Each reports the median and p99 of the commits in milliseconds.
func BenchmarkCommit(b *testing.B) {
	b.Run("transport=wire-tls", func(b *testing.B) {
		leader := cluster(b, wireTransport, "a", "b", "c")
		b.ResetTimer()
		took := commits(b, leader, b.N)
		b.StopTimer()
		reportPercentiles(b, "", took)
	})
	b.Run("transport=raft-tcp", func(b *testing.B) {
		leader := cluster(b, plainTransport, "a", "b", "c")
		b.ResetTimer()
		took := commits(b, leader, b.N)
		b.StopTimer()
		reportPercentiles(b, "", took)
	})
	// One node alone: no network, only its own bbolt commit and FSM, the
	// floor under both of the above.
	b.Run("transport=raft-tcp/nodes=1", func(b *testing.B) {
		leader := cluster(b, plainTransport, "a")
		b.ResetTimer()
		took := commits(b, leader, b.N)
		b.StopTimer()
		reportPercentiles(b, "", took)
	})
	b.Run("side-by-side", func(b *testing.B) {
		tls := cluster(b, wireTransport, "a", "b", "c")
		tcp := cluster(b, plainTransport, "a", "b", "c")
		tlsTook := make([]time.Duration, 0, b.N)
		tcpTook := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			// Alternate which goes first so neither always follows the
			// other's fsyncs.
			if i%2 == 0 {
				tlsTook = append(tlsTook, commits(b, tls, 1)...)
				tcpTook = append(tcpTook, commits(b, tcp, 1)...)
			} else {
				tcpTook = append(tcpTook, commits(b, tcp, 1)...)
				tlsTook = append(tlsTook, commits(b, tls, 1)...)
			}
		}
		b.StopTimer()
		tlsP50 := reportPercentiles(b, "tls-", tlsTook)
		tcpP50 := reportPercentiles(b, "tcp-", tcpTook)
		b.ReportMetric(tlsP50/tcpP50, "tls/tcp-p50-ratio")
	})
}

// commits applies n register commands on the leader, one at a time, and
// returns how long each took.
func commits(b *testing.B, leader *consensus.Node, n int) []time.Duration {
	took := make([]time.Duration, 0, n)
	cmd := consensus.Register{Member: consensus.Member{Name: "x"}}
	for range n {
		start := time.Now()
		if err := leader.Apply(cmd, 10*time.Second); err != nil {
			b.Fatalf("apply: %v", err)
		}
		took = append(took, time.Since(start))
	}
	return took
}

// reportPercentiles reports the median and p99 of took in milliseconds,
// with the metric names prefixed, and returns the median.
func reportPercentiles(b *testing.B, prefix string, took []time.Duration) float64 {
	slices.Sort(took)
	p50 := ms(took[len(took)/2])
	b.ReportMetric(p50, prefix+"p50-ms")
	b.ReportMetric(ms(took[(len(took)*99)/100]), prefix+"p99-ms")
	return p50
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// The identity is derived once per process: FromCookie is slow on purpose.
var identity = sync.OnceValues(func() (*wire.Identity, error) {
	return wire.FromCookie("bench-cookie")
})

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// wireTransport configures a node the way the agent does: consensus.Open
// makes the TLS transport from Bind and Identity.
func wireTransport(b *testing.B, cfg *consensus.Config) {
	id, err := identity()
	if err != nil {
		b.Fatal(err)
	}
	cfg.Bind = "127.0.0.1:0"
	cfg.Identity = id
}

// plainTransport gives a node raft's own TCP transport, no TLS.
func plainTransport(b *testing.B, cfg *consensus.Config) {
	tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 3, 5*time.Second, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Transport = tr
}

// cluster opens the named nodes, the first bootstrapped, joins the others
// and makes them voters, and returns the leader once every node has the
// whole registry. Each node's files are in its own b.TempDir().
func cluster(b *testing.B, transport func(*testing.B, *consensus.Config), names ...string) *consensus.Node {
	b.Helper()
	var nodes []*consensus.Node
	for i, name := range names {
		cfg := consensus.Config{Name: name, Dir: b.TempDir(), Bootstrap: i == 0, Log: quiet}
		transport(b, &cfg)
		n, err := openQuietly(cfg)
		if err != nil {
			b.Fatalf("open %s: %v", name, err)
		}
		b.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
	}
	leader := nodes[0]
	waitUntil(b, "a to lead", leader.IsLeader)
	for _, n := range nodes {
		m := consensus.Member{Name: n.Name(), RaftAddr: n.Addr()}
		if err := leader.Join(m, 10*time.Second); err != nil {
			b.Fatalf("join %s: %v", n.Name(), err)
		}
	}
	for _, n := range nodes[1:] {
		waitUntil(b, n.Name()+" to catch up", func() bool { return len(n.MemberNames()) == len(names) })
		if err := leader.Promote(n.Name(), 0, 10*time.Second, n.SyncLog); err != nil {
			b.Fatal(err)
		}
	}
	servers, err := leader.Servers()
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range servers {
		if s.Suffrage != raft.Voter {
			b.Fatalf("%s is %v after promotion", s.ID, s.Suffrage)
		}
	}
	return leader
}

// openQuietly opens a node whose Raft logger writes to /dev/null. Open
// gives raft an hclog on os.Stderr, and its warnings while the cluster
// forms would land in the middle of the benchmark's result lines, which
// benchstat then cannot read; hclog takes os.Stderr's value when Open makes
// it, so swapping it for the call is enough. Benchmarks run one at a time.
func openQuietly(cfg consensus.Config) (*consensus.Node, error) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	stderr := os.Stderr
	os.Stderr = null
	defer func() { os.Stderr = stderr }()
	return consensus.Open(cfg)
}

func waitUntil(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatal(fmt.Sprintf("gave up after 20s waiting for %s", what))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
