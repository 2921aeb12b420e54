// Package bundle owns the source bundle, the unit a code version travels as: the files of one Go
// main package directory packed into a gzip-compressed tar whose bytes depend only on the files'
// paths and contents, and named by the sha256 of those bytes. Pack makes one; Extract unpacks one
// that arrived from elsewhere (the Raft log), refusing anything that could write outside its folder.
package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// MaxSize is the largest packed bundle accepted. A bundle rides inside a Raft log entry, and every
// node keeps the recent ones, so it is meant for source only.
const MaxSize = 4 << 20

// MaxUnpackedSize bounds the total size of the files a bundle unpacks to, so a small, highly
// compressed bundle cannot fill a node's disk.
const MaxUnpackedSize = 64 << 20

// MaxEntries bounds the number of entries in a bundle, for the same reason as MaxUnpackedSize.
const MaxEntries = 10000

// Every entry gets the same mode and time, so the bytes depend only on paths and contents.
const fileMode = 0o644

var epoch = time.Unix(0, 0).UTC()

// ID names a bundle, and so a version of a duck's source, by its content: the lowercase hex
// sha256 of its packed bytes. It is safe as a file name once Valid.
type ID string

// Valid reports whether id has the shape of a bundle ID, so callers can use it as a file name.
func (id ID) Valid() bool { return ValidID(string(id)) }

// Short is the first 12 hex digits, how a version not yet committed is shown.
func (id ID) Short() string {
	if len(id) > 12 {
		return string(id[:12])
	}
	return string(id)
}

// Bundle is a packed source bundle and its ID.
type Bundle struct {
	// ID is the lowercase hex sha256 of Data; equal content gives an equal ID.
	ID ID
	// Data is the gzip-compressed tar.
	Data []byte
}

// Sum returns the ID of packed bundle bytes: their sha256 in lowercase hex.
func Sum(data []byte) ID {
	h := sha256.Sum256(data)
	return ID(hex.EncodeToString(h[:]))
}

// ValidID reports whether id has the shape of a bundle ID, so callers can use it as a file name.
func ValidID(id string) bool {
	if len(id) != sha256.Size*2 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Pack packs every regular file under dir, except files and directories whose names begin with a
// dot (.git, editor files), into a bundle. Paths are sorted and every entry has mode 0644, a fixed
// time and no owner, so packing the same content twice gives the same bytes and the same ID.
// Symbolic links and other non-regular files are refused: a bundle carries files, not links.
func Pack(dir string) (Bundle, error) {
	// WalkDir on a missing folder or a file says only "lstat DIR: no such file or directory".
	if info, err := os.Stat(dir); err != nil {
		return Bundle{}, fmt.Errorf("pack %s: %w; give the folder of the duck's source (its main package, such as ./duck)", dir, err)
	} else if !info.IsDir() {
		return Bundle{}, fmt.Errorf("pack %s: not a folder; give the folder of the duck's source (its main package, such as ./duck), not a file in it", dir)
	}
	var paths []string
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch t := d.Type(); {
		case t.IsDir():
			return nil
		case t&fs.ModeSymlink != 0:
			return fmt.Errorf("pack %s: %s is a symbolic link; a bundle carries regular files only, so replace the link with a copy of the file it points to", dir, p)
		case !t.IsRegular():
			return fmt.Errorf("pack %s: %s is not a regular file (%s); move it out of the duck's folder", dir, p, t.Type())
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		if total > MaxUnpackedSize {
			return fmt.Errorf("pack %s: the files add up to more than %d bytes, the unpacked limit; a bundle carries source only, so move data files out of the duck's folder", dir, MaxUnpackedSize)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		paths = append(paths, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return Bundle{}, err
	}
	if len(paths) == 0 {
		return Bundle{}, fmt.Errorf("pack %s: no files to pack; point at the folder of the duck's main package", dir)
	}
	if len(paths) > MaxEntries {
		return Bundle{}, fmt.Errorf("pack %s: %d files, over the limit of %d; a bundle carries one main package's source", dir, len(paths), MaxEntries)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return Bundle{}, err
	}
	// The gzip header keeps its zero name, comment and time: only the files decide the bytes.
	tw := tar.NewWriter(zw)
	for _, p := range paths {
		content, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			return Bundle{}, fmt.Errorf("pack %s: %w", dir, err)
		}
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     p,
			Mode:     fileMode,
			Size:     int64(len(content)),
			ModTime:  epoch,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return Bundle{}, fmt.Errorf("pack %s: %s: %w", dir, p, err)
		}
		if _, err := tw.Write(content); err != nil {
			return Bundle{}, fmt.Errorf("pack %s: %s: %w", dir, p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return Bundle{}, fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := zw.Close(); err != nil {
		return Bundle{}, fmt.Errorf("pack %s: %w", dir, err)
	}
	if buf.Len() > MaxSize {
		return Bundle{}, fmt.Errorf("pack %s: the bundle is %d bytes packed, over the %d byte limit (%s); a bundle carries source only, so move large or generated files out of the duck's folder or load them at run time", dir, buf.Len(), MaxSize, mib(MaxSize))
	}
	data := buf.Bytes()
	return Bundle{ID: Sum(data), Data: data}, nil
}

func mib(n int) string {
	return fmt.Sprintf("%g MiB", float64(n)/(1<<20))
}
