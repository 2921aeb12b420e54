package hotswap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"testing"
)

// netHTTPEnds is where net/http says each request of data ends: the
// offsets after each request it reads whole, body and trailer included,
// up to the first it cannot read, and why it stopped.
func netHTTPEnds(data []byte) ([]int, error) {
	src := bytes.NewReader(data)
	br := bufio.NewReader(src)
	var ends []int
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return ends, err
		}
		_, err = io.Copy(io.Discard, req.Body)
		req.Body.Close()
		if err != nil {
			return ends, err
		}
		ends = append(ends, len(data)-src.Len()-br.Buffered())
	}
}

// framerEnds feeds data to a framer one byte at a time and returns the
// offsets where it counted a request complete, and the framer.
func framerEnds(data []byte) ([]int, *framer) {
	f := &framer{}
	var ends []int
	for i := range data {
		before := f.complete
		f.feed(data[i : i+1])
		if f.complete != before {
			ends = append(ends, i+1)
		}
	}
	return ends, f
}

var framingSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /quack HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	"POST /quack HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\ncontent-length:  2 \r\n\r\nhi",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\nhi\r\n0\r\nX-Sum: 1\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nX-Long: " + string(bytes.Repeat([]byte("x"), 600)) + "\r\nContent-Length: 1\r\n\r\nz",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab",
}

// The framer must agree with net/http on where every request ends, or say
// it is unsure: handing a connection over at a wrong boundary would split
// a request between two generations.
func TestFramerAgreesWithNetHTTP(t *testing.T) {
	for _, s := range framingSeeds {
		checkFraming(t, []byte(s))
	}
	// The seeds must exercise both outcomes, or the check proves nothing.
	_, sure := framerEnds([]byte(framingSeeds[3]))
	_, unsure := framerEnds([]byte(framingSeeds[7]))
	if !sure.idle() || sure.complete != 2 || unsure.unsure == "" {
		t.Errorf("chunked pipeline: idle=%v complete=%d; conflicting lengths: unsure=%q", sure.idle(), sure.complete, unsure.unsure)
	}
}

func FuzzFramerAgreesWithNetHTTP(f *testing.F) {
	for _, s := range framingSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkFraming(t, data) })
}

func checkFraming(t *testing.T, data []byte) {
	t.Helper()
	want, stop := netHTTPEnds(data)
	got, fr := framerEnds(data)
	if fr.unsure != "" {
		return
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("%q: request %d ends at %d for the framer, at %d for net/http", data, i+1, got[i], want[i])
		}
	}
	// Whatever net/http read whole, the framer must have seen end too.
	if len(got) < len(want) {
		t.Fatalf("%q: net/http read %d requests (ending %v), the framer %d (%v) and is not unsure", data, len(want), want, len(got), got)
	}
	// A request the framer saw end that net/http still waits on would be
	// split; one net/http refuses ends the connection, which is harmless.
	if len(got) > len(want) && (errors.Is(stop, io.EOF) || errors.Is(stop, io.ErrUnexpectedEOF)) {
		t.Fatalf("%q: the framer saw request %d end at %d; net/http waits for more (%v)", data, len(want)+1, got[len(want)], stop)
	}
	// Fed in one piece, the framer ends in the same place.
	one := &framer{}
	one.feed(data)
	if one.complete != fr.complete || one.state != fr.state || one.unsure != "" {
		t.Fatalf("%q: fed whole, complete=%d state=%d unsure=%q; byte by byte complete=%d state=%d", data, one.complete, one.state, one.unsure, fr.complete, fr.state)
	}
}

// A connection that moves in the middle of a request's headers carries the bytes read of that
// request: the framer says where in a read it began, and whether the headers are still coming.
func TestFramerSaysWhereAPartRequestBegan(t *testing.T) {
	f := &framer{}
	first := "GET / HTTP/1.1\r\nHost: duck\r\n\r\n"
	f.feed([]byte(first + "POST /quack HTTP/1.1\r\n"))
	if !f.inHeaders() || f.began != len(first) {
		t.Fatalf("after a whole GET and a POST's request line: inHeaders %v, began %d; want true, %d", f.inHeaders(), f.began, len(first))
	}
	f.feed([]byte("Host: duck\r\n"))
	if !f.inHeaders() || f.began != -1 {
		t.Fatalf("after another header line: inHeaders %v, began %d; want true, -1 (it began in an earlier read)", f.inHeaders(), f.began)
	}
	f.feed([]byte("Content-Length: 5\r\n\r\nqu"))
	if f.inHeaders() {
		t.Fatal("in the POST's body the framer still says its headers are coming: the handler may run, and the request must stay")
	}
}
