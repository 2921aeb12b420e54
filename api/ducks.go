package api

import (
	"cmp"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/duckraft/duckraft/runtime/bundle"
)

// Event is one step of a long operation, streamed to the CLI as a line of JSON so it can show
// what it is waiting for.
type Event struct {
	Time    time.Time `json:"time"`
	Phase   string    `json:"phase"` // building, built, swapping, swapped, reverting, done, failed
	Duck    string    `json:"duck,omitempty"`
	Version Label     `json:"version,omitempty"`
	Message string    `json:"message,omitempty"`
	Error   string    `json:"error,omitempty"`
	// Output is the compiler's own message, verbatim, when a build failed.
	Output string `json:"output,omitempty"`
}

// SpawnRequest starts a duck; an empty Addr picks a free loopback port. On names the node to
// start it on (Node.spawn); the node asked forwards it there with the version it runs itself, as
// in Erlang, where a remote spawn runs the code of the node the call comes from.
type SpawnRequest struct {
	Addr    string    `json:"addr,omitempty"`
	Env     []string  `json:"env,omitempty"`
	On      string    `json:"on,omitempty"`
	Version bundle.ID `json:"version,omitempty"` // bundle ID; empty: the node's own version
	From    string    `json:"from,omitempty"`    // the node the call came through
}

// CheckAddr says what is wrong with r.Addr, nil for an empty one (a free loopback port) or a
// HOST:PORT with a port from 1 to 65535: a duck binds it itself, and port 0 would be a port the
// node could not report.
func (r SpawnRequest) CheckAddr() error {
	if r.Addr == "" {
		return nil
	}
	_, p, err := net.SplitHostPort(r.Addr)
	if n, perr := strconv.Atoi(p); err != nil || perr != nil || n < 1 || n > 65535 {
		return fmt.Errorf("duck address %q: give HOST:PORT with a port from 1 to 65535 (--listen), a port alone (--port), or neither for a free port on 127.0.0.1", r.Addr)
	}
	return nil
}

// DuckInfo is one duck as `ducks` shows it.
type DuckInfo struct {
	Node    string `json:"node"`
	ID      string `json:"id"`
	Version Label  `json:"version"`
	Addr    string `json:"addr"`
	PID     int    `json:"pid"`
	// Gen numbers the duck's processes: 1 for the first, one more per swap and per restart.
	Gen int `json:"gen"`
	// State is one of starting, running, swapping, restarting, failed, stopped; or "node
	// unreachable" for a duck whose node did not answer.
	State    string    `json:"state"`
	Restarts int       `json:"restarts"`
	Started  time.Time `json:"started,omitzero"` // when the current generation became Ready
	// UpFor is how long the current generation had been Ready when the node answered, by the
	// node's own clock: another node compares it with its own durations, never with Started.
	UpFor     time.Duration `json:"up_for_ns,omitempty"`
	LastError string        `json:"last_error,omitempty"`
}

// StopRequest stops duck Name on node On (default: the node asked).
type StopRequest struct {
	Name string `json:"name"`
	On   string `json:"on,omitempty"`
	// Restart starts the duck again at once from the state it saved on stopping, the way a
	// user restarts a plain process: the baseline a hot swap is measured against.
	Restart bool `json:"restart,omitempty"`
}

// LogLine is one line a duck printed, as `logs` streams it. A line with Error set says the
// stream from Node broke: the node is gone, and its ducks with it.
type LogLine struct {
	Node    string    `json:"node"`
	Error   string    `json:"error,omitempty"`
	Duck    string    `json:"duck,omitempty"`
	Version Label     `json:"version,omitempty"`
	Gen     int       `json:"gen,omitempty"`
	Stream  string    `json:"stream,omitempty"` // stdout or stderr
	Text    string    `json:"text,omitempty"`
	Time    time.Time `json:"time,omitzero"`
}

// Label is how a version is shown to users and reported by its ducks: vN once committed (see
// rollout.Number.Label), else the first 12 hex digits of its bundle's ID (LabelOf).
type Label string

// LabelOf labels a version by its bundle's ID alone, for one not committed (or not known to be).
func LabelOf(id bundle.ID) Label { return Label(id.Short()) }

// DucksHealth says why the ducks of one node are not healthy runningFor after its rollout turn
// ended ("": they are), or that it cannot tell yet.
func DucksHealth(ducks []DuckInfo, runningFor time.Duration) (string, error) {
	for _, d := range ducks {
		switch d.State {
		case "running", "stopped":
		case "starting", "swapping":
			return "", fmt.Errorf("%s is %s", d.ID, d.State)
		default:
			return fmt.Sprintf("%s is %s (%d restarts; last error: %s)", d.ID, d.State, d.Restarts, cmp.Or(d.LastError, "none")), nil
		}
		// A duck started by hand since then has no restarts; one that crashed and was
		// started again has, and its generation is younger than the turn's end.
		// A node of an older duckraft does not say UpFor: its restarts tell nothing then.
		if d.Restarts > 0 && d.State == "running" && d.UpFor > 0 && d.UpFor < runningFor {
			// The generation's age dates only the last restart: the first crash may have come
			// sooner (it read as when the duck crashed).
			return fmt.Sprintf("%s crashed and was restarted since the turn ended (%d restarts, the last %s after the turn; last error: %s)", d.ID, d.Restarts, (runningFor - d.UpFor).Round(time.Millisecond), cmp.Or(d.LastError, "none")), nil
		}
	}
	return "", nil
}
