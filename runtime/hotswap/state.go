package hotswap

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// State holds a duck's state of type S. Every change goes through Update so
// the runtime can freeze the state for a swap: while frozen, Update waits, and
// in a generation that has handed over, it never returns, because the change
// belongs to the new generation now.
type State[S any] struct {
	mu     sync.Mutex
	thawed *sync.Cond
	v      S
	frozen bool
	// pending: the state has still to come from the previous generation, which serves on
	// meanwhile (setup runs first; see Run). Read waits, and says so on wanted, so that the
	// new generation asks for the state at once.
	pending    bool
	wanted     chan struct{}
	wantedOnce sync.Once
	// older renders the state in the layouts of older schemas; nil without
	// Config.Downgrade.
	older func(S) map[int]json.RawMessage
}

func newState[S any](v S, older func(S) map[int]json.RawMessage) *State[S] {
	s := &State[S]{v: v, frozen: true, older: older, wanted: make(chan struct{})}
	s.thawed = sync.NewCond(&s.mu)
	return s
}

// newPendingState is a State whose value the previous generation has still to hand over:
// restore gives it.
func newPendingState[S any](older func(S) map[int]json.RawMessage) *State[S] {
	var zero S
	s := newState(zero, older)
	s.pending = true
	return s
}

// restore gives a pending State its value and wakes those waiting in Read.
func (s *State[S]) restore(v S) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v, s.pending = v, false
	s.thawed.Broadcast()
}

// wantedNow is closed once a Read waits for the state to come.
func (s *State[S]) wantedNow() <-chan struct{} { return s.wanted }

// Update calls f with a pointer to the state, f being the only code to touch
// it while it runs. Side effects that must not repeat (printing, counting a
// request) belong inside f, so they happen exactly once across generations.
// Update waits while the state is frozen, including before the duck is
// Ready; so setup itself must not call it.
func (s *State[S]) Update(f func(*S)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.frozen {
		s.thawed.Wait()
	}
	f(&s.v)
}

// Read calls f with the state; f must not keep or change anything the state
// points to. Reading never waits for a swap, with one exception: called
// during setup in a new generation, Read waits for the previous generation
// to hand the state over (setup runs while that one still serves, and asks
// for the state only when it needs it, or once it is done).
func (s *State[S]) Read(f func(S)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.pending {
		s.wantedOnce.Do(func() { close(s.wanted) })
		s.thawed.Wait()
	}
	f(s.v)
}

// freeze stops Update and returns the state as JSON, taken after the last
// Update that got in, and its renderings for older schemas.
func (s *State[S]) freeze() (json.RawMessage, map[int]json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frozen = true
	b, err := json.Marshal(s.v)
	if err != nil {
		return nil, nil, fmt.Errorf("state does not encode as JSON: %w; keep only exported, JSON-friendly fields in it", err)
	}
	var older map[int]json.RawMessage
	if s.older != nil {
		older = s.older(s.v)
	}
	return b, older, nil
}

func (s *State[S]) thaw() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frozen = false
	s.thawed.Broadcast()
}

// snapshot is what travels between generations.
type snapshot struct {
	Schema int `json:"schema"`
	// Generation counts swaps since the first start, for logs.
	Generation int             `json:"generation"`
	State      json.RawMessage `json:"state"`
	// Older is the state in the layout of each older schema the writer's
	// Config.Downgrade could produce, for a version that goes back.
	Older map[int]json.RawMessage `json:"older,omitempty"`
	// Pending: the state is still to come, once asked for (pendingState).
	Pending bool `json:"pending,omitempty"`
}

// ErrNoDowngrade is what Config.Downgrade returns for a schema it cannot
// produce; the ones below it are not asked.
var ErrNoDowngrade = errors.New("hotswap: no downgrade to that schema")

// downgrades returns the function that renders a state in every older
// schema cfg.Downgrade can produce, from Schema-1 down, stopping at the
// first it cannot. A failure is logged, not fatal: going forward does not
// need it, and a later swap back is refused with a clear error.
func downgrades[S any](cfg Config[S], log *slog.Logger) func(S) map[int]json.RawMessage {
	if cfg.Downgrade == nil {
		return nil
	}
	return func(v S) map[int]json.RawMessage {
		older := map[int]json.RawMessage{}
		for to := cfg.Schema - 1; to >= 0; to-- {
			old, err := cfg.Downgrade(to, v)
			if errors.Is(err, ErrNoDowngrade) {
				break
			}
			if err == nil {
				var b []byte
				if b, err = json.Marshal(old); err == nil {
					older[to] = b
					continue
				}
			}
			log.Warn("Config.Downgrade failed; a swap back to this schema will be refused", "to_schema", to, "err", err)
			break
		}
		return older
	}
}

// decode turns a snapshot into an S of this version's schema: as it is
// when the schemas match, from the writer's own rendering for this schema
// when it was newer and had a Downgrade (how is "downgraded"), and by
// Migrate otherwise ("migrated").
func decode[S any](cfg Config[S], snap snapshot) (v S, how string, err error) {
	if snap.Schema == cfg.Schema {
		if err := json.Unmarshal(snap.State, &v); err != nil {
			return v, "", fmt.Errorf("state of schema %d does not decode into this version's state type: %w; bump Config.Schema and add a Migrate if its layout changed", snap.Schema, err)
		}
		return v, "", nil
	}
	if raw, ok := snap.Older[cfg.Schema]; ok && snap.Schema > cfg.Schema {
		if err := json.Unmarshal(raw, &v); err != nil {
			return v, "", fmt.Errorf("the schema %d version's Downgrade to schema %d gave a state this version cannot decode: %w; fix that Downgrade", snap.Schema, cfg.Schema, err)
		}
		return v, "downgraded", nil
	}
	if cfg.Migrate == nil {
		if snap.Schema > cfg.Schema {
			return v, "", fmt.Errorf("state has schema %d, newer than this version's schema %d, and the version that wrote it has no Config.Downgrade to schema %d, nor this one a Config.Migrate; give the schema %d version a Downgrade and swap to it first, or deploy a version of schema %d", snap.Schema, cfg.Schema, cfg.Schema, snap.Schema, snap.Schema)
		}
		return v, "", fmt.Errorf("state has schema %d but this version has schema %d and no Config.Migrate; add a Migrate that converts schema %d, or deploy a version of schema %d", snap.Schema, cfg.Schema, snap.Schema, snap.Schema)
	}
	v, err = cfg.Migrate(snap.Schema, snap.State)
	if err != nil && snap.Schema > cfg.Schema {
		return v, "", fmt.Errorf("migrating state from schema %d to %d: %w; and the version that wrote it has no Config.Downgrade to schema %d: give the schema %d version a Downgrade and swap to it first, or deploy a version of schema %d", snap.Schema, cfg.Schema, err, cfg.Schema, snap.Schema, snap.Schema)
	}
	if err != nil {
		return v, "", fmt.Errorf("migrating state from schema %d to %d: %w", snap.Schema, cfg.Schema, err)
	}
	return v, "migrated", nil
}

// readSnapshot reads a snapshot from the start of f whatever f's offset,
// since the offset is shared with the other generation's descriptor. A
// pending one (pendingState) has Pending set and no State.
func readSnapshot(f *os.File) (snapshot, error) {
	var snap snapshot
	fi, err := f.Stat()
	if err != nil {
		return snap, err
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, fi.Size()))
	if err != nil {
		return snap, err
	}
	if err := json.Unmarshal(b, &snap); err != nil {
		return snap, fmt.Errorf("state snapshot is not valid JSON (%d bytes): %w", len(b), err)
	}
	if snap.State == nil && !snap.Pending {
		return snap, errors.New("state snapshot has no state field")
	}
	return snap, nil
}

// writeSnapshot replaces f's content with snap.
func writeSnapshot(f *os.File, snap snapshot) error {
	b, err := json.Marshal(snap)
	if err != nil {
		return err
	}
	return writeContent(f, b)
}

// writeContent replaces f's content with b. It writes over the old content
// and cuts what is left of it only when the new one is shorter: on a disk
// file system, emptying the file first costs a journal entry, tens of
// microseconds on the swap's path, at every swap.
func writeContent(f *os.File, b []byte) error {
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > int64(len(b)) {
		return f.Truncate(int64(len(b)))
	}
	return nil
}

// saveSnapshot writes snap to path by rename, so a reader sees the old
// snapshot or the new one, never half of one.
func saveSnapshot(path string, snap snapshot) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := writeSnapshot(f, snap); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
