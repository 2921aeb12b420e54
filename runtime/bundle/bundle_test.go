package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeTree creates files (slash paths relative to dir) with the given contents.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readTree returns every regular file under dir by slash path, failing on anything else.
func readTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	got := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			t.Errorf("%s is not a regular file: %s", p, d.Type())
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

var duckFiles = map[string]string{
	"main.go":          "package main\n\nfunc main() { println(quack()) }\n",
	"quack.go":         "package main\n\nfunc quack() string { return \"quack\" }\n",
	"static/index.txt": "hello\n",
	"a.go":             "package main\n",
	"a/b.txt":          "sorted by full path, not per directory\n",
}

func TestRoundTrip(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, duckFiles)
	// Dot-files and dot-directories stay behind.
	writeTree(t, src, map[string]string{".git/config": "[core]\n", ".swp": "x", "static/.DS_Store": "x"})

	b, err := Pack(src)
	if err != nil {
		t.Fatal(err)
	}
	if b.ID != Sum(b.Data) || !b.ID.Valid() {
		t.Fatalf("ID %q is not the sha256 of the data", b.ID)
	}
	dest := filepath.Join(t.TempDir(), "src")
	if err := Extract(b.Data, dest); err != nil {
		t.Fatal(err)
	}
	got := readTree(t, dest)
	if len(got) != len(duckFiles) {
		t.Errorf("extracted %d files, want %d: %v", len(got), len(duckFiles), got)
	}
	for name, want := range duckFiles {
		if got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}
}

func TestPackIsDeterministic(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, duckFiles)
	first, err := Pack(src)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Pack(src)
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != first.ID {
		t.Fatalf("packing twice gave %s then %s", first.ID, again.ID)
	}

	// Times, modes and the folder's own path are not content.
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for name := range duckFiles {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	other := t.TempDir()
	writeTree(t, other, duckFiles)
	for _, dir := range []string{src, other} {
		b, err := Pack(dir)
		if err != nil {
			t.Fatal(err)
		}
		if b.ID != first.ID {
			t.Errorf("Pack(%s) = %s after touching times and modes, want %s", dir, b.ID, first.ID)
		}
	}

	writeTree(t, other, map[string]string{"quack.go": "package main\n\nfunc quack() string { return \"QUACK\" }\n"})
	changed, err := Pack(other)
	if err != nil {
		t.Fatal(err)
	}
	if changed.ID == first.ID {
		t.Error("changing a file kept the same ID")
	}
}

func TestPackRefusesSymlink(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, duckFiles)
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "passwd.go")); err != nil {
		t.Fatal(err)
	}
	_, err := Pack(src)
	if err == nil || !strings.Contains(err.Error(), "passwd.go is a symbolic link") {
		t.Fatalf("Pack = %v, want a symbolic link error naming passwd.go", err)
	}
}

func TestPackSaysWhatToGiveForAMissingFolderOrAFile(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, duckFiles)
	for path, want := range map[string]string{
		filepath.Join(src, "nowhere"): "no such file or directory; give the folder of the duck's source",
		filepath.Join(src, "main.go"): "not a folder; give the folder of the duck's source (its main package, such as ./duck), not a file in it",
	} {
		if _, err := Pack(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Pack(%s) = %v, want %q", path, err, want)
		}
	}
}

func TestPackRefusesOversizedBundle(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, duckFiles)
	// Random bytes do not compress, so the packed size passes the limit.
	big := make([]byte, MaxSize+1024)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(src, "blob.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Pack(src)
	if err == nil {
		t.Fatal("Pack of an oversized folder succeeded")
	}
	for _, want := range []string{"4194304 byte limit", "bytes packed", "move large"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// entry is one raw tar entry for building hostile bundles by hand.
type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, body}
}

func rawBundle(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		if err := tw.WriteHeader(&e.hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zeroBomb is a bundle holding one file of n zero bytes, which compresses to almost nothing.
func zeroBomb(t testing.TB, n int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Mode: 0o644, Size: n}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for left := n; left > 0; {
		k := min(left, int64(len(zeros)))
		if _, err := tw.Write(zeros[:k]); err != nil {
			t.Fatal(err)
		}
		left -= k
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExtractRefusesHostileBundles(t *testing.T) {
	// A path that an absolute entry would write to if it were honoured; the test owns it.
	absTarget := filepath.Join(t.TempDir(), "abs", "x")

	good := rawBundle(t, file("main.go", "package main\n\nfunc main() {}\n"), file("z.go", strings.Repeat("package main\n", 50)))
	truncated := good[:len(good)/2]
	flippedCRC := bytes.Clone(good)
	flippedCRC[len(flippedCRC)-6] ^= 0xff
	trailing := append(bytes.Clone(good), "garbage"...)
	oversized := make([]byte, MaxSize+1)

	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"dot-dot", rawBundle(t, file("../x", "escape")), `"../x" has a ".." component`},
		{"dot-dot inside", rawBundle(t, file("a/../../x", "escape")), `"a/../../x" has a ".." component`},
		{"absolute", rawBundle(t, file(absTarget, "escape")), "is an absolute path"},
		{"symlink out", rawBundle(t,
			entry{tar.Header{Typeflag: tar.TypeSymlink, Name: "out", Linkname: "/etc"}, ""},
			file("out/x", "escape")), `"out" is a symbolic link to "/etc"`},
		{"hardlink", rawBundle(t,
			entry{tar.Header{Typeflag: tar.TypeLink, Name: "passwd", Linkname: "/etc/passwd"}, ""}), `"passwd" is a hard link`},
		{"device", rawBundle(t,
			entry{tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}, ""}), `"null" has tar type`},
		{"fifo", rawBundle(t,
			entry{tar.Header{Typeflag: tar.TypeFifo, Name: "pipe"}, ""}), `"pipe" has tar type`},
		{"duplicate", rawBundle(t, file("main.go", "a"), file("main.go", "b")), `"main.go" appears twice`},
		{"file under file", rawBundle(t, file("a", "x"), file("a/b", "y")), `entry "a/b"`},
		{"backslash", rawBundle(t, file(`..\x`, "x")), "backslash"},
		{"empty component", rawBundle(t, file("a//b", "x")), "not a clean path"},
		{"oversized", oversized, "over the 4194304 byte limit"},
		{"unpacked too big", zeroBomb(t, MaxUnpackedSize+1), "unpacked size past"},
		{"truncated", truncated, "corrupt or truncated"},
		{"flipped crc", flippedCRC, "corrupt or truncated"},
		{"trailing garbage", trailing, "corrupt or truncated"},
		{"not gzip", []byte("package main\n"), "not a gzip-compressed bundle"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			outer := t.TempDir()
			dest := filepath.Join(outer, "src")
			err := Extract(tc.data, dest)
			if err == nil {
				t.Fatal("Extract succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Extract error %q does not say %q", err, tc.want)
			}
			assertEmpty(t, outer)
			if _, err := os.Lstat(absTarget); err == nil {
				t.Errorf("%s was written", absTarget)
			}
		})
	}
}

func TestExtractRefusesEveryFlippedByte(t *testing.T) {
	good := rawBundle(t, file("main.go", "package main\n\nfunc main() { println(\"quack\") }\n"))
	// The first ten bytes are the gzip header, whose time, flags and OS bytes gzip does not check.
	for i := 10; i < len(good); i++ {
		bad := bytes.Clone(good)
		bad[i] ^= 0xff
		outer := t.TempDir()
		if err := Extract(bad, filepath.Join(outer, "src")); err == nil {
			t.Errorf("flipping byte %d of %d was not noticed", i, len(good))
		}
		assertEmpty(t, outer)
	}
}

func TestExtractRefusesExistingDest(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, duckFiles)
	b, err := Pack(src)
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	err = Extract(b.Data, dest)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("Extract into an existing folder = %v, want an already exists error", err)
	}
}

// assertEmpty fails if dir holds anything: a refused bundle must leave no trace next to dest.
func assertEmpty(t testing.TB, dir string) {
	t.Helper()
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("%s was left behind in %s", e.Name(), dir)
	}
}

func FuzzExtract(f *testing.F) {
	f.Add(rawBundle(f, file("main.go", "package main\n")))
	f.Add(rawBundle(f, file("../x", "escape")))
	f.Add(rawBundle(f, file("/tmp/x", "escape")))
	f.Add(rawBundle(f, entry{tar.Header{Typeflag: tar.TypeSymlink, Name: "out", Linkname: ".."}, ""}, file("out/x", "escape")))
	f.Add(rawBundle(f, entry{tar.Header{Typeflag: tar.TypeDir, Name: "a/"}, ""}, file("a/b.go", "package b\n")))
	f.Add([]byte{0x1f, 0x8b})
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		dest := filepath.Join(outer, "src")
		err := Extract(data, dest)
		left, rerr := os.ReadDir(outer)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			for _, e := range left {
				t.Errorf("refused bundle (%v) left %s behind", err, e.Name())
			}
			return
		}
		if len(left) != 1 || left[0].Name() != "src" {
			t.Errorf("extracted bundle left %v next to dest, want only src", left)
		}
		// Only regular files and directories, so nothing in dest can point outside it.
		filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Error(err)
				return nil
			}
			if !d.IsDir() && !d.Type().IsRegular() {
				t.Errorf("%s is %s, want a regular file or directory", p, d.Type())
			}
			return nil
		})
	})
}
