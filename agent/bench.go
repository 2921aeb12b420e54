package agent

import (
	"fmt"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"slices"
	"time"

	"github.com/duckraft/duckraft/consensus"
)

func (a *Agent) handleBenchCommit(w http.ResponseWriter, r *http.Request) {
	var req api.CommitBench
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if req.N <= 0 || req.N > 10000 {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("n=%d: ask for 1 to 10000 commits", req.N))
		return
	}
	var res api.CommitLatency
	err := a.mem.OnLeader(r.Context(), "/v1/bench/commit", req, &res, func(n *consensus.Node) error {
		res = api.CommitLatency{Leader: a.self.Name}
		for range req.N {
			t0 := time.Now()
			if err := n.Apply(consensus.Command{Op: consensus.OpNoop}, applyTimeout); err != nil {
				return err
			}
			res.Samples = append(res.Samples, time.Since(t0))
		}
		slices.Sort(res.Samples)
		return nil
	})
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, res)
}
