package hotswap

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
}

func newState[S any](v S) *State[S] {
	s := &State[S]{v: v, frozen: true}
	s.thawed = sync.NewCond(&s.mu)
	return s
}

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
// points to. Reading never waits for a swap.
func (s *State[S]) Read(f func(S)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.v)
}

// freeze stops Update and returns the state as JSON, taken after the last
// Update that got in.
func (s *State[S]) freeze() (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frozen = true
	b, err := json.Marshal(s.v)
	if err != nil {
		return nil, fmt.Errorf("state does not encode as JSON: %w; keep only exported, JSON-friendly fields in it", err)
	}
	return b, nil
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
}

// decode turns a snapshot into an S of this version's schema, migrating
// when the schemas differ.
func decode[S any](cfg Config[S], snap snapshot) (S, error) {
	var v S
	if snap.Schema == cfg.Schema {
		if err := json.Unmarshal(snap.State, &v); err != nil {
			return v, fmt.Errorf("state of schema %d does not decode into this version's state type: %w; bump Config.Schema and add a Migrate if its layout changed", snap.Schema, err)
		}
		return v, nil
	}
	if cfg.Migrate == nil {
		return v, fmt.Errorf("state has schema %d but this version has schema %d and no Config.Migrate; add a Migrate that converts schema %d, or deploy a version of schema %d", snap.Schema, cfg.Schema, snap.Schema, snap.Schema)
	}
	v, err := cfg.Migrate(snap.Schema, snap.State)
	if err != nil {
		return v, fmt.Errorf("migrating state from schema %d to %d: %w", snap.Schema, cfg.Schema, err)
	}
	return v, nil
}

// readSnapshot reads a snapshot from the start of f whatever f's offset,
// since the offset is shared with the other generation's descriptor.
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
	if snap.State == nil {
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
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	return err
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
