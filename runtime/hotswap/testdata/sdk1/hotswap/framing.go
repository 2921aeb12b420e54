package hotswap

import (
	"bytes"
	"strconv"
	"strings"
)

// framer follows where each HTTP/1.x request ends in the bytes a server
// reads from a connection, by the same rules as net/http's server
// (Content-Length, chunked bodies with trailers). A connection may leave
// for the next generation only when the framer can say which bytes read so
// far net/http still holds: none (every byte belongs to a request that is
// complete), or the start of a request whose headers are still coming,
// which the connection carries with it. Other bytes net/http reads ahead
// (a pipelined request behind a running one, the one byte of its
// background read) sit in buffers that no file descriptor carries. When
// the framer cannot tell, it says why in unsure and the connection stays
// with this generation.
type framer struct {
	state    frameState
	complete int    // requests whose last byte has been read
	remain   int64  // body or chunk bytes still to come
	line     []byte // the current line, its first maxFramedLine bytes
	long     bool   // the current line is longer than that
	first    bool   // the current line is the request line
	http10   bool
	length   int64 // Content-Length, or -1
	chunked  bool
	lastName string // the header a continuation line would continue
	unsure   string
	// began is where the current request began in the bytes last fed, or
	// -1 if it began before them.
	began int
}

type frameState int

const (
	betweenRequests frameState = iota
	inHeader                   // request line and header lines
	inBody                     // remain bytes of a Content-Length body
	inChunkSize                // a chunk-size line
	inChunkData                // remain bytes of chunk data
	inChunkEnd                 // the CRLF after chunk data; remain is 2 or 1
	inTrailer                  // trailer lines up to an empty line
)

// maxFramedLine is how much of a line the framer keeps: enough for the
// headers it reads, whose values are short.
const maxFramedLine = 256

// idle says whether every byte fed so far belongs to a complete request.
func (f *framer) idle() bool { return f.state == betweenRequests && f.unsure == "" }

// inHeaders says whether the bytes fed end inside a request's line or
// headers: net/http has not yet handed that request to a handler.
func (f *framer) inHeaders() bool { return f.state == inHeader && f.unsure == "" }

func (f *framer) feed(p []byte) {
	f.began = -1
	all := len(p)
	for len(p) > 0 && f.unsure == "" {
		switch f.state {
		case betweenRequests:
			f.began = all - len(p)
			f.state, f.first, f.http10, f.length, f.chunked, f.lastName = inHeader, true, false, -1, false, ""
			f.line = f.line[:0]
		case inBody, inChunkData:
			n := int64(len(p))
			if n > f.remain {
				n = f.remain
			}
			p = p[n:]
			f.remain -= n
			if f.remain > 0 {
				continue
			}
			if f.state == inBody {
				f.done()
			} else {
				f.state, f.remain = inChunkEnd, 2
			}
		case inChunkEnd:
			want := byte('\n')
			if f.remain == 2 {
				want = '\r'
			}
			if p[0] != want {
				f.unsure = "chunk data not followed by CRLF"
				return
			}
			p = p[1:]
			if f.remain--; f.remain == 0 {
				f.state, f.line = inChunkSize, f.line[:0]
			}
		default: // the line-based states
			i := bytes.IndexByte(p, '\n')
			part := p
			if i >= 0 {
				part = p[:i]
			}
			if room := maxFramedLine - len(f.line); len(part) > room {
				f.line = append(f.line, part[:room]...)
				f.long = true
			} else {
				f.line = append(f.line, part...)
			}
			if i < 0 {
				return
			}
			p = p[i+1:]
			line := bytes.TrimSuffix(f.line, []byte("\r"))
			f.endLine(line)
			f.line, f.long = f.line[:0], false
		}
	}
}

func (f *framer) done() {
	f.complete++
	f.state = betweenRequests
}

// endLine acts on one whole line (without its line ending).
func (f *framer) endLine(line []byte) {
	switch f.state {
	case inHeader:
		f.headerLine(line)
	case inChunkSize:
		if f.long {
			f.unsure = "chunk-size line too long"
			return
		}
		s := string(line)
		if i := strings.IndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		n, err := strconv.ParseUint(strings.TrimRight(s, " \t"), 16, 63)
		if err != nil {
			f.unsure = "unreadable chunk size"
			return
		}
		if n == 0 {
			f.state = inTrailer
			return
		}
		f.state, f.remain = inChunkData, int64(n)
	case inTrailer:
		if len(line) == 0 {
			f.done()
		}
	}
}

func (f *framer) headerLine(line []byte) {
	if f.first {
		f.first = false
		switch {
		case bytes.HasSuffix(line, []byte(" HTTP/1.1")):
		case bytes.HasSuffix(line, []byte(" HTTP/1.0")):
			f.http10 = true
		default:
			// HTTP/2's preface, HTTP/0.9, or garbage the server will refuse.
			f.unsure = "not an HTTP/1.x request line"
		}
		return
	}
	if len(line) == 0 {
		f.endHeader()
		return
	}
	if line[0] == ' ' || line[0] == '\t' {
		if f.lastName == "content-length" || f.lastName == "transfer-encoding" {
			f.unsure = "folded " + f.lastName + " header"
		}
		return
	}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		f.lastName = ""
		return
	}
	name := strings.ToLower(string(bytes.TrimSpace(line[:colon])))
	f.lastName = name
	if name != "content-length" && name != "transfer-encoding" {
		return
	}
	if f.long {
		f.unsure = name + " header too long"
		return
	}
	value := strings.TrimSpace(string(line[colon+1:]))
	if name == "transfer-encoding" {
		if f.chunked || !strings.EqualFold(value, "chunked") || f.http10 {
			f.unsure = "transfer-encoding other than one chunked on HTTP/1.1"
		}
		f.chunked = true
		return
	}
	n, err := strconv.ParseUint(value, 10, 63)
	if err != nil || (f.length >= 0 && int64(n) != f.length) {
		f.unsure = "unreadable or conflicting content-length"
		return
	}
	f.length = int64(n)
}

func (f *framer) endHeader() {
	switch {
	case f.chunked:
		// Chunked wins over Content-Length, as in net/http.
		f.state, f.line = inChunkSize, f.line[:0]
	case f.length > 0:
		f.state, f.remain = inBody, f.length
	default:
		f.done()
	}
}
