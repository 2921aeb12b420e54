package logstore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func open(t *testing.T, path string, unsynced bool) *Store {
	t.Helper()
	s, err := Open(path, unsynced, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func write(t *testing.T, s *Store, from, to uint64) {
	t.Helper()
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte("entry")})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64(keyCurrentTerm, 3); err != nil {
		t.Fatal(err)
	}
}

func last(t *testing.T, s *Store) uint64 {
	t.Helper()
	i, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func marker(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path + markerSuffix)
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// A non-voter's log is unsynced, says so beside itself with the machine's boot, and keeps its
// entries across a restart of the process: closed, or killed on the same boot.
func TestAnUnsyncedLogIsMarkedAndKeptOnTheSameBoot(t *testing.T) {
	if bootID() == "" {
		t.Fatalf("this kernel has no %s: the unsynced log needs it (Linux has it)", bootIDPath)
	}
	path := filepath.Join(t.TempDir(), "raft.db")
	s := open(t, path, true)
	if !s.Unsynced() {
		t.Fatal("a new store opened unsynced is synced")
	}
	if got := marker(t, path); got != bootID() {
		t.Fatalf("marker = %q, want this boot's ID %q", got, bootID())
	}
	write(t, s, 1, 10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := marker(t, path); got != closedMark {
		t.Fatalf("marker after Close = %q, want %q", got, closedMark)
	}

	// Opened again, even as for a bootstrap: the mode is the file's.
	s = open(t, path, false)
	if !s.Unsynced() || last(t, s) != 10 {
		t.Fatalf("reopened: unsynced %v, last index %d; want unsynced, 10", s.Unsynced(), last(t, s))
	}
	s.Close()

	// As after kill -9: the marker still holds this boot.
	if err := os.WriteFile(path+markerSuffix, []byte(bootID()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, true)
	defer s.Close()
	if last(t, s) != 10 {
		t.Fatalf("after a crash of the process on the same boot the log has %d entries, want 10", last(t, s))
	}
}

// After a restart of the machine an unsynced log may be torn: it is thrown away, and the store
// keeps a term so that raft does not take the node for a new cluster of one.
func TestAnUnsyncedLogFromAnotherBootIsThrownAway(t *testing.T) {
	if bootID() == "" {
		t.Fatalf("this kernel has no %s: the unsynced log needs it (Linux has it)", bootIDPath)
	}
	path := filepath.Join(t.TempDir(), "raft.db")
	s := open(t, path, true)
	write(t, s, 1, 10)
	s.Close()
	if err := os.WriteFile(path+markerSuffix, []byte("0a2c5a4e-boot-before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, true)
	defer s.Close()
	if n := last(t, s); n != 0 {
		t.Fatalf("the log from another boot still has %d entries", n)
	}
	has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore())
	if err != nil || !has {
		t.Fatalf("HasExistingState = %v, %v: raft would bootstrap a node that was a member", has, err)
	}
	if !s.Unsynced() || marker(t, path) != bootID() {
		t.Fatalf("after throwing the log away: unsynced %v, marker %q; want unsynced, this boot", s.Unsynced(), marker(t, path))
	}
	// The marker alone, from another boot, its file gone (a crash in the middle of throwing a
	// log away): the node had joined a cluster, so a term again.
	s.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+markerSuffix, []byte("0a2c5a4e-boot-before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, true)
	if has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore()); err != nil || !has {
		t.Fatalf("a marker without its log: HasExistingState = %v, %v; raft would bootstrap a member", has, err)
	}
	// A log closed cleanly before the machine stopped is kept.
	write(t, s, 1, 4)
	s.Close()
	s = open(t, path, true)
	defer s.Close()
	if n := last(t, s); n != 4 {
		t.Fatalf("a log closed before the machine restarted has %d entries, want 4", n)
	}
}

// Sync, called before the node may vote, puts the log on disk and keeps it synced from then on,
// across restarts too.
func TestSyncKeepsTheLogSyncedForGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := open(t, path, true)
	write(t, s, 1, 5)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if s.Unsynced() || marker(t, path) != "" {
		t.Fatalf("after Sync: unsynced %v, marker %q", s.Unsynced(), marker(t, path))
	}
	write(t, s, 6, 8) // the reopened handle works
	if n := last(t, s); n != 8 {
		t.Fatalf("last index %d after Sync and more writes, want 8", n)
	}
	s.Close()
	s = open(t, path, true)
	defer s.Close()
	if s.Unsynced() || last(t, s) != 8 {
		t.Fatalf("reopened as for a joining node: unsynced %v, last %d; want synced, 8", s.Unsynced(), last(t, s))
	}
}

// A log that exists without the marker was written synced (a voter, or a release before
// unsynced logs), and stays so; without a boot ID nothing is unsynced.
func TestSyncedUnlessToldAndAble(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := open(t, path, false)
	write(t, s, 1, 2)
	s.Close()
	s = open(t, path, true)
	if s.Unsynced() {
		t.Fatal("a log written synced was opened unsynced")
	}
	s.Close()

	old := bootIDPath
	bootIDPath = filepath.Join(t.TempDir(), "no-boot-id")
	defer func() { bootIDPath = old }()
	s = open(t, filepath.Join(t.TempDir(), "raft.db"), true)
	if s.Unsynced() {
		t.Fatal("unsynced without a boot ID: a restart of the machine could not be told")
	}
	s.Close()

	// A log closed unsynced, opened where no boot ID can be read: synced, and for good (its
	// marker goes, or a later start with a boot ID would take it for unsynced again).
	bootIDPath = old
	path = filepath.Join(t.TempDir(), "raft.db")
	s = open(t, path, true)
	write(t, s, 1, 3)
	s.Close()
	bootIDPath = filepath.Join(t.TempDir(), "no-boot-id")
	s = open(t, path, true)
	if s.Unsynced() || marker(t, path) != "" {
		t.Fatalf("without a boot ID: unsynced %v, marker %q; want synced, no marker", s.Unsynced(), marker(t, path))
	}
	s.Close()
	bootIDPath = old
	s = open(t, path, true)
	defer s.Close()
	if s.Unsynced() || last(t, s) != 3 {
		t.Fatalf("with a boot ID again: unsynced %v, last %d; want synced, 3", s.Unsynced(), last(t, s))
	}
}
