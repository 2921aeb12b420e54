package rollout

import (
	"strconv"
	"time"

	"github.com/duckraft/duckraft/runtime/bundle"
)

// Local is what a node knows of itself that the log does not hold. Have, Acted and Synced
// survive its restarts (they live in its data folder); the rest is its process's memory.
type Local struct {
	Have   bundle.ID // bundle ID its ducks run, "" if none yet
	Acted  string    // TurnKey of the last turn it finished
	Synced string    // SyncKey of the last rollout end it caught up with
}

// DutyKind is what a node should do next.
type DutyKind int

// The duties of a node.
const (
	Idle       DutyKind = iota
	Turn                // swap every duck to Duty.Version, then report Duty.Success
	CatchUp             // switch to Duty.Version, the cluster's choice, outside any turn
	MarkSynced          // already on the cluster's choice: remember Duty.Key
	Report              // a turn ended here but the log did not hear: report Duty.Success again
)

// Duty is a node's next job in a rollout.
type Duty struct {
	Kind    DutyKind
	Version bundle.ID // bundle ID to switch to
	// Success is the phase a Turn reports when it worked: Running forward, Reverted back.
	Success Phase
	// Key names the turn or the rollout end, so that a node never takes the same one twice,
	// across restarts too (Local.Acted, Local.Synced).
	Key string
}

// NeedsBuild reports whether node should build the target now: builds start at the commit,
// beside the rollout, so that a node's turn is its swap alone. A node that restarted in the
// middle of its build (building is what this process has started) builds again; the build
// cache makes that cheap when the first attempt had finished.
func (r *Rollout) NeedsBuild(node string, building bool) bool {
	if r == nil || building || !r.forward() {
		return false
	}
	me := r.Nodes[node]
	return me != nil && (me.Phase == Pending || me.Phase == Building)
}

// Follow is node's next duty. A turn the leader granted comes first (one under way when the node
// restarted is taken again, even while the rollout goes back, which waits for it); once the
// rollout has ended or paused, a node not on the version the cluster settled on catches up.
func (r *Rollout) Follow(node string, l Local) Duty {
	if r == nil {
		return Duty{}
	}
	if me := r.Nodes[node]; me != nil {
		forward := me.Phase == Granted && r.forward() || me.Phase == Swapping && (r.forward() || r.State == GoingBack)
		if forward || me.Phase == Reverting {
			d := Duty{Kind: Turn, Version: r.Target, Success: Running}
			if me.Phase == Reverting {
				d.Version, d.Success = r.FromID, Reverted
			}
			d.Key = strconv.Itoa(int(r.Version)) + "/" + string(d.Success) + "/" + me.Granted.Format(time.RFC3339Nano)
			if l.Acted == d.Key {
				// The turn is over here, but the log still has the node in it: the report
				// went down with the process that sent it (killed between its switch and the
				// report). Say it again, from what the node runs, or the rollout waits for the
				// progress deadline and calls a good swap failed (found by the nemesis). The
				// log may not even have heard that the turn started (granted still): the start
				// is said beside the swap, and may have gone down with it.
				d.Kind = Report
				if l.Have != d.Version {
					d.Success = Failed
					if me.Phase == Reverting {
						d.Success = Reverted // going back failed: reported as such, see the agent
					}
				}
				return d
			}
			return d
		}
	}
	// Catching up waits until the rollout has ended, so that no node swaps out of turn while it
	// runs; or until it paused for the operator, who may take long, for a node that missed an
	// earlier version. A node skipped or failed in this rollout that runs either of its versions
	// waits for the end, or it would swap back now and forward again then.
	if r.Active() {
		me := r.Nodes[node]
		if r.State != Paused || me != nil && (me.Phase == Skipped || me.Phase == Failed) && (l.Have == r.Target || l.Have == r.FromID) {
			return Duty{}
		}
	}
	key := SyncKey(r)
	if l.Synced == key {
		return Duty{}
	}
	want := r.Desired(node)
	if want == "" || want == l.Have {
		return Duty{Kind: MarkSynced, Key: key}
	}
	return Duty{Kind: CatchUp, Version: want, Key: key}
}

// GrantedWithin reports whether node's turn was granted (forward or back) at most d before now,
// by the leader's stamp; a stamp after now (a clock behind the leader's) is not within.
func (r *Rollout) GrantedWithin(node string, now time.Time, d time.Duration) bool {
	me := r.Nodes[node]
	if me == nil || me.Granted.IsZero() {
		return false
	}
	age := now.Sub(me.Granted)
	return age >= 0 && age < d
}

// SyncKey names the end of one rollout; its start time tells it from a rollout of the same
// number in a cluster the node was in before.
func SyncKey(r *Rollout) string {
	return strconv.Itoa(int(r.Version)) + "/" + string(r.State) + "/" + r.Started.Format(time.RFC3339Nano)
}
