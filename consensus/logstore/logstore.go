// Package logstore keeps a node's Raft log and stable store in one bbolt file (raft-boltdb), synced
// to disk at every write or not: a non-voter's log is a copy of the leader's that no commit waits
// for, so it need not reach the disk before the node answers.
//
// Why: at a hundred members on one machine every entry was written and fsynced by every member,
// a hundred fsyncs queued on one disk, and the five voters a commit waits for were among them.
// Raft counts only voters' copies towards a commit (hashicorp/raft's commitment is over the
// voters of the latest configuration), so a non-voter that loses the tail of its log loses
// nothing the cluster agreed on: the leader sends the entries again.
//
// What may be lost, and how it is handled:
//   - A process that dies (kill -9, a crash) loses nothing: its writes are in the kernel's page
//     cache, and bbolt's file is consistent after any write it finished.
//   - A machine that stops (power loss, a kernel panic) may leave an unsynced bbolt file torn:
//     pages of a transaction on disk without the rest. The store notes the machine's boot ID
//     beside the file while it is unsynced; opened after another boot, the file is thrown away
//     and the node starts with an empty log, and a term, so that it does not take itself for a
//     new cluster. The leader sends it a snapshot and the log.
//   - A non-voter about to vote must be synced first (Sync), since from the configuration that
//     makes it a voter its copy counts. Sync writes everything to disk and reopens the file
//     synced; a synced store never goes back.
package logstore

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/duckraft/duckraft/atomicfile"
)

// Store is raft's LogStore and StableStore.
type Store struct {
	path string
	log  *slog.Logger

	mu       sync.RWMutex // held for writing while Sync swaps the file's handle
	bolt     *raftboltdb.BoltStore
	unsynced bool
}

// markerSuffix names the file beside the log that says it is unsynced: it holds the boot ID of
// the machine while the store is open, closedMark once Close synced it.
const markerSuffix = ".unsynced"

const closedMark = "closed"

// bootIDPath holds an ID the kernel draws at every boot.
var bootIDPath = "/proc/sys/kernel/random/boot_id"

// Open opens the store at path. A store that exists keeps its mode (synced unless its marker
// is there). A new one is unsynced when unsynced is true and the machine's boot ID can be read
// (without it a restart of the machine could not be told from one of the process).
func Open(path string, unsynced bool, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{path: path, log: log}
	marker := path + markerSuffix
	boot := bootID()
	_, statErr := os.Stat(path)
	exists := statErr == nil
	discarded, hadMarker := false, false
	switch was, err := os.ReadFile(marker); {
	case err == nil:
		unsynced, hadMarker = true, true
		if was := string(bytes.TrimSpace(was)); was != closedMark && (boot == "" || was != boot) {
			if err := s.discard(exists); err != nil {
				return nil, err
			}
			exists, discarded = false, true
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("reading %s: %w", marker, err)
	case exists:
		unsynced = false // a log written synced stays synced
	}
	if unsynced && boot == "" {
		// Synced from here on: the marker goes, or a later start that can read a boot ID would
		// take this log for an unsynced one (a voter's, maybe).
		unsynced = false
		if hadMarker {
			if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
		}
	}
	if unsynced {
		// The marker is on disk before anything unsynced is written.
		if err := writeSynced(marker, boot+"\n"); err != nil {
			return nil, fmt.Errorf("marking the raft log unsynced: %w", err)
		}
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: path, NoSync: unsynced})
	if err != nil {
		return nil, err
	}
	s.bolt, s.unsynced = bolt, unsynced
	if !exists || hadMarker && !unsynced {
		// The new file's (and the marker's removal's) entry in the folder reaches the disk.
		if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
			bolt.Close()
			return nil, err
		}
	}
	if discarded {
		// Thrown away: a term, so that raft sees history and does not bootstrap a cluster of
		// one. Also when no file was there to throw away: the marker alone says this node had
		// joined a cluster (a crash between the two removals of discard, or a machine that
		// stopped before the folder's entries reached the disk).
		if err := bolt.SetUint64(keyCurrentTerm, 1); err != nil {
			bolt.Close()
			return nil, err
		}
	}
	return s, nil
}

// keyCurrentTerm is the key raft keeps its term under in the stable store.
var keyCurrentTerm = []byte("CurrentTerm")

// discard throws away an unsynced log the machine may have torn.
func (s *Store) discard(exists bool) error {
	if exists {
		s.log.Warn("the machine restarted since this non-voter's raft log was last synced: throwing the log away; the leader sends it again", "path", s.path)
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("throwing away the unsynced raft log %s: %w; move it aside and start the node again", s.path, err)
		}
	}
	if err := os.Remove(s.path + markerSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(s.path))
}

// Unsynced says whether writes return before they reach the disk.
func (s *Store) Unsynced() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.unsynced
}

// Sync puts everything written on disk and syncs every later write: it must have returned before
// this node counts as a voter. A no-op for a synced store.
func (s *Store) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.unsynced {
		return nil
	}
	if err := s.bolt.Sync(); err != nil {
		return fmt.Errorf("syncing the raft log: %w", err)
	}
	if err := s.bolt.Close(); err != nil {
		return fmt.Errorf("closing the raft log to reopen it synced: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: s.path})
	if err != nil {
		// The store is closed now: raft's next read fails (it panics on some), and the node
		// must be started again, which opens the log synced or not as the marker says.
		return fmt.Errorf("reopening the raft log synced: %w; stop the node and start it again", err)
	}
	s.bolt = bolt
	// Only now: a crash before this leaves the marker, and at worst the synced log is thrown
	// away after a restart of the machine.
	if err := os.Remove(s.path + markerSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := atomicfile.SyncDir(filepath.Dir(s.path)); err != nil {
		return err
	}
	s.unsynced = false
	s.log.Info("raft log synced from now on (this node may vote)")
	return nil
}

// Close syncs an unsynced store and closes it.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.unsynced {
		return s.bolt.Close()
	}
	err := s.bolt.Sync()
	if err == nil {
		err = writeSynced(s.path+markerSuffix, closedMark+"\n")
	}
	return errors.Join(err, s.bolt.Close())
}

func (s *Store) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.FirstIndex()
}

func (s *Store) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.LastIndex()
}

func (s *Store) GetLog(index uint64, log *raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.GetLog(index, log)
}

func (s *Store) StoreLog(log *raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.StoreLog(log)
}

func (s *Store) StoreLogs(logs []*raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.StoreLogs(logs)
}

func (s *Store) DeleteRange(min, max uint64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.DeleteRange(min, max)
}

func (s *Store) Set(key, val []byte) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.Set(key, val)
}

func (s *Store) Get(key []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.Get(key)
}

func (s *Store) SetUint64(key []byte, val uint64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.SetUint64(key, val)
}

func (s *Store) GetUint64(key []byte) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bolt.GetUint64(key)
}

// bootID is this boot's ID, "" where the kernel does not say.
func bootID() string {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}

// writeSynced writes a small file and its folder's entry to disk.
func writeSynced(path, content string) error {
	if err := atomicfile.Write(path, []byte(content), 0o600); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}
