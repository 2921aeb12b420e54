package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxStream bounds the decompressed stream as a whole (headers and padding included), so that a
// bundle of gigabytes of zeros after its last entry is refused rather than inflated.
const maxStream = 2 * MaxUnpackedSize

// Extract unpacks the bundle data into dest, which must not exist yet. A bundle arrives from the
// network, so Extract trusts nothing in it: it refuses absolute paths, ".." and any other
// non-canonical path, links, devices and every entry that is not a regular file or a directory,
// duplicate entries, a packed size over MaxSize, an unpacked size over MaxUnpackedSize, more than
// MaxEntries entries, and corrupt or truncated data. Each error names the offending entry.
//
// Extract writes into a fresh hidden directory next to dest, through an os.Root so no path can
// leave it, and renames that directory to dest only when every entry has been checked and
// written. A refused bundle therefore leaves nothing behind, neither in dest nor next to it.
func Extract(data []byte, dest string) (err error) {
	if len(data) > MaxSize {
		return fmt.Errorf("extract bundle: it is %d bytes packed, over the %d byte limit (%s); bundles that large are refused everywhere, so repack the duck with source files only", len(data), MaxSize, mib(MaxSize))
	}
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("extract bundle into %s: it already exists; extract into a new folder or remove it first", dest)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("extract bundle into %s: %w", dest, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".extract-")
	if err != nil {
		return fmt.Errorf("extract bundle into %s: %w", dest, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := unpack(data, tmp); err != nil {
		return fmt.Errorf("extract bundle into %s: %w", dest, err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("extract bundle into %s: %w", dest, err)
	}
	return nil
}

// unpack writes every entry of data under dir, which it reaches only through an os.Root.
func unpack(data []byte, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()

	// bytes.Reader is an io.ByteReader, so gzip reads exactly the members and nothing more; its
	// default multistream mode then refuses trailing bytes that are not another valid member.
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not a gzip-compressed bundle (corrupt or truncated?): %w", err)
	}
	stream := &limitedReader{r: zr, n: maxStream}
	tr := tar.NewReader(stream)

	seen := make(map[string]bool)
	var total int64
	for entries := 0; ; entries++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("corrupt or truncated bundle after %d entries: %w", entries, err)
		}
		if entries >= MaxEntries {
			return fmt.Errorf("more than %d entries; a bundle carries one main package's source", MaxEntries)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if seen[name] {
			return fmt.Errorf("entry %q appears twice; a bundle lists each path once", hdr.Name)
		}
		seen[name] = true

		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		case tar.TypeReg:
			total += hdr.Size
			if total > MaxUnpackedSize {
				return fmt.Errorf("entry %q takes the unpacked size past the %d byte limit; a bundle carries source only", hdr.Name, MaxUnpackedSize)
			}
			if err := writeFile(root, name, tr, hdr.Size); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		case tar.TypeSymlink:
			return fmt.Errorf("entry %q is a symbolic link to %q; a bundle carries regular files only", hdr.Name, hdr.Linkname)
		case tar.TypeLink:
			return fmt.Errorf("entry %q is a hard link to %q; a bundle carries regular files only", hdr.Name, hdr.Linkname)
		default:
			return fmt.Errorf("entry %q has tar type %q (not a regular file or directory); a bundle carries regular files only", hdr.Name, hdr.Typeflag)
		}
	}
	// Read to the end so gzip checks its CRC and length: a flipped byte late in the stream must
	// not pass just because the tar reader stopped at its end marker.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return fmt.Errorf("corrupt or truncated bundle: %w", err)
	}
	return nil
}

func writeFile(root *os.Root, name string, r io.Reader, size int64) error {
	if dir := path.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	// O_EXCL: a file must never replace or write through something already there.
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, size); err != nil {
		f.Close()
		return fmt.Errorf("corrupt or truncated bundle: %w", err)
	}
	return f.Close()
}

// cleanName returns the entry name as a relative, slash-separated path, or an error if the name
// could point anywhere but a plain path inside the destination.
func cleanName(name string) (string, error) {
	n := strings.TrimSuffix(name, "/")
	switch {
	case n == "":
		return "", fmt.Errorf("entry %q has an empty path", name)
	case strings.HasPrefix(n, "/"):
		return "", fmt.Errorf("entry %q is an absolute path; bundle paths are relative to the bundle", name)
	case strings.ContainsAny(n, "\\\x00"):
		return "", fmt.Errorf("entry %q contains a backslash or NUL; bundle paths use forward slashes only", name)
	}
	for _, part := range strings.Split(n, "/") {
		switch part {
		case "..":
			return "", fmt.Errorf("entry %q has a \"..\" component and would escape the bundle's folder", name)
		case "", ".":
			return "", fmt.Errorf("entry %q is not a clean path (empty or \".\" component)", name)
		}
	}
	if !filepath.IsLocal(n) {
		return "", fmt.Errorf("entry %q is not a local path", name)
	}
	return n, nil
}

// limitedReader fails, rather than returning EOF, once more than n bytes have been read, so an
// oversized stream is an error and not a silently shortened bundle.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("the bundle decompresses to more than %d bytes", maxStream)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
