package systemtest

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/localcluster"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

// metric reads one sample's value from a Prometheus text page; -1 if absent.
func metric(page, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// /metrics answers without the cookie, reveals nothing secret, and counts what happened: Raft
// role and commit index, versions, builds, swaps, refused connections.
func TestMetricsWithoutCookie(t *testing.T) {
	c := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: randomCookie()}
	t.Cleanup(func() { c.StopAll(20 * time.Second) })
	a, err := c.Start("a", "--metrics-addr", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if a.Metrics == "" {
		t.Fatal("the ready line names no metrics address")
	}
	page := scrape(t, a.Metrics)
	if metric(page, `duckraft_raft_state{state="leader"}`) != 1 || metric(page, "duckraft_raft_commit_index") < 1 {
		t.Fatalf("raft metrics missing or wrong:\n%s", page)
	}

	cli(t, c, a.API, "deploy", "../duck")
	cli(t, c, a.API, "spawn", "--detach")
	cli(t, c, a.API, "load", "../testdata/duck-v2")
	other := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: randomCookie()}
	tryCLI(other, a.API, "members") // refused: another cookie

	waitFor(t, "the counts to show on /metrics", 10*time.Second, func() bool {
		page = scrape(t, a.Metrics)
		return metric(page, `duckraft_connections_refused_total{reason="wrong_cookie"}`) >= 1
	})
	for series, want := range map[string]float64{
		"duckraft_version_committed":                             1,
		`duckraft_builds_total{result="ok"}`:                     2,
		`duckraft_swaps_total{result="ok"}`:                      1,
		"duckraft_ducks":                                         1,
		"duckraft_swap_duration_seconds_count":                   1,
		"duckraft_build_duration_seconds_count":                  2,
		"duckraft_rollout_active":                                0,
		`duckraft_raft_state{state="follower"}`:                  0,
		`duckraft_connections_refused_total{reason="no_cookie"}`: 0,
	} {
		if got := metric(page, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// What the old generations did with their connections: present from the start, whatever
	// the swaps met (runtime/supervise counts them).
	for _, series := range []string{"duckraft_duck_connections_moved_total", `duckraft_duck_connections_fell_back_total{reason="unframeable"}`,
		`duckraft_duck_connections_fell_back_total{reason="not_taken"}`, "duckraft_duck_requests_forwarded_total"} {
		if got := metric(page, series); got < 0 {
			t.Errorf("%s missing from /metrics", series)
		}
	}
	if strings.Contains(page, c.Cookie) || strings.Contains(page, a.API) {
		t.Fatal("/metrics reveals the cookie or the API address")
	}
}
