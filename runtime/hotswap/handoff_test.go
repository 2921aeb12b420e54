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
// (it would read the first byte of the message and drop the rest); one that says "hb" is.
func TestBytesGoOnlyToAReceiverThatTakesThem(t *testing.T) {
	for _, hello := range []string{"h", "hb"} {
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
		if want := hello == "hb"; out.carries != want {
			t.Errorf("hello %q: carries = %v, want %v", hello, out.carries, want)
		}
	}
}

// What a connection carries arrives with it, whole, and a connection sent without bytes
// arrives with none.
func TestACarriedConnectionArrivesWithItsBytes(t *testing.T) {
	out, far := channel(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	uc, err := openReceiver(far)
	if err != nil {
		t.Fatal(err)
	}
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
