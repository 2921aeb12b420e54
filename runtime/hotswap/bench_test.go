package hotswap_test

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSwap measures SIGHUP to old process gone, for the duck on this
// SDK and for bare tableflip draining with http.Server.Shutdown, idle and
// under 8 keep-alive clients. It reports the median and p99 and, under
// load, how many requests failed (the bare server is expected to fail some:
// DESIGN's keep-alive trap).
func BenchmarkSwap(b *testing.B) {
	for _, name := range []string{"duck", "bare"} {
		for _, clients := range []int{0, 8} {
			b.Run(fmt.Sprintf("%s/clients=%d", name, clients), func(b *testing.B) {
				benchSwap(b, name, clients)
			})
		}
	}
}

func benchSwap(b *testing.B, name string, clients int) {
	d := startDuck(b, name, nil)
	var l *load
	if clients > 0 {
		l = startLoad(b, d.addr, clients, time.Millisecond, 1_000_000, 10*time.Minute)
	}
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if l != nil {
			before := l.requests.Load()
			poll(b, 30*time.Second, "100 more requests", func() bool { return l.requests.Load() >= before+100 })
		}
		old := d.pid()
		b.StartTimer()
		start := time.Now()
		d.signal(old, syscall.SIGHUP)
		if !waitExit(old, 30*time.Second) {
			b.Fatalf("old pid %d still running 30s after SIGHUP", old)
		}
		took = append(took, time.Since(start))
		b.StopTimer()
		poll(b, 30*time.Second, "the new generation in the PID file", func() bool { return d.pid() != old })
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(ms(took[len(took)/2]), "p50-ms")
	b.ReportMetric(ms(took[(len(took)*99)/100]), "p99-ms")
	if l != nil {
		l.stop()
		b.ReportMetric(float64(l.failures.Load()), "failed-requests")
		b.ReportMetric(float64(l.requests.Load()), "requests")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
