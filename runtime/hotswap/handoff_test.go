package hotswap

import (
	"net"
	"os"
	"testing"
	"time"
)

// channel makes a hand-over channel and returns this generation's end and the file the next
// generation would inherit.
func channel(t *testing.T) (*handoff, *os.File) {
	t.Helper()
	var far *os.File
	out, err := newHandoff(func(name string, f *os.File) error {
		dup, err := net.FileConn(f)
		if err != nil {
			return err
		}
		defer dup.Close()
		far, err = dup.(*net.UnixConn).File()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(out.close)
	return out, far
}

// A receiver on an SDK from before bytes were carried says only "h", and is never sent bytes
// (it would read the first byte of the message and drop the rest); one that says "hb" is. Only
// one that says "n" too is sent many connections in one message: an older one has room for
// one descriptor, and the kernel would close the others.
func TestBytesGoOnlyToAReceiverThatTakesThem(t *testing.T) {
	for _, hello := range []string{"h", "hb", "hbn"} {
		out, far := channel(t)
		uc, err := net.FileConn(far)
		far.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		uc.Write([]byte(hello))
		if !out.heard() {
			t.Fatalf("hello %q not heard", hello)
		}
		if want := hello != "h"; out.carries != want {
			t.Errorf("hello %q: carries = %v, want %v", hello, out.carries, want)
		}
		if want := hello == "hbn"; out.batches != want {
			t.Errorf("hello %q: batches = %v, want %v", hello, out.batches, want)
		}
	}
}

// channelTo is a hand-over channel with its receiving end open, and a listener to make the
// connections it carries.
func channelTo(t *testing.T) (*handoff, net.Listener, *net.UnixConn) {
	t.Helper()
	out, far := channel(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	uc, err := openReceiver(far)
	if err != nil {
		t.Fatal(err)
	}
	return out, ln, uc
}

// What a connection carries arrives with it, whole, and a connection sent without bytes
// arrives with none.
func TestACarriedConnectionArrivesWithItsBytes(t *testing.T) {
	out, ln, uc := channelTo(t)
	if !out.heard() || !out.carries {
		t.Fatal("a receiver on this SDK should say it takes bytes")
	}
	type got struct {
		c       net.Conn
		carried []byte
	}
	arrived := make(chan got, 2)
	go receive(uc, func(c net.Conn, carried []byte) { arrived <- got{c, carried} })
	start := "POST /quack HTTP/1.1\r\nHost: duck\r\n"
	for _, carried := range []string{start, ""} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := out.send(c, []byte(carried)); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-arrived:
			g.c.Close()
			if string(g.carried) != carried {
				t.Errorf("arrived carrying %q, want %q", g.carried, carried)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("nothing arrived")
		}
	}
}

// Idle connections sent in one message arrive every one, each the very socket that was sent:
// what the client writes on it is read from the one received. More than a message holds go in
// several.
func TestIdleConnectionsLeaveTogether(t *testing.T) {
	for _, n := range []int{3, maxBatch + 2} {
		out, ln, uc := channelTo(t)
		if !out.heard() || !out.batches {
			t.Fatal("a receiver on this SDK should say it takes batches")
		}
		arrived := make(chan net.Conn, n)
		go receive(uc, func(c net.Conn, carried []byte) {
			if len(carried) > 0 {
				t.Errorf("a connection of a batch arrived carrying %q", carried)
			}
			arrived <- c
		})
		var clients []net.Conn
		var sent []*conn
		for range n {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			clients = append(clients, c)
			sent = append(sent, newConn(sc, nil))
		}
		for len(sent) > 0 {
			batch := sent[:min(len(sent), maxBatch)]
			sent = sent[len(batch):]
			if err := out.sendBatch(batch, nil); err != nil {
				t.Fatal(err)
			}
		}
		got := map[string]net.Conn{}
		for range n {
			select {
			case c := <-arrived:
				defer c.Close()
				got[c.RemoteAddr().String()] = c
			case <-time.After(10 * time.Second):
				t.Fatalf("%d of %d connections arrived", len(got), n)
			}
		}
		for _, c := range clients {
			rc := got[c.LocalAddr().String()]
			if rc == nil {
				t.Errorf("n=%d: the connection from %s did not arrive", n, c.LocalAddr())
				continue
			}
			// The socket itself: what the client writes now is read from the descriptor
			// received.
			if _, err := c.Write([]byte("q")); err != nil {
				t.Fatal(err)
			}
			rc.SetReadDeadline(time.Now().Add(10 * time.Second))
			var b [1]byte
			if _, err := rc.Read(b[:]); err != nil || b[0] != 'q' {
				t.Errorf("n=%d: read %q, %v from the received connection, want \"q\"", n, b[:], err)
			}
		}
	}
}
