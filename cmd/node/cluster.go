package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/duckraft/duckraft/agent"
	"github.com/duckraft/duckraft/wire"
)

// client is what every client command shares: where the node is and how to prove the cookie.
type client struct {
	addr    string
	timeout time.Duration
	cookie  *wire.CookieSource
	api     *api.Client
}

func clientFlags(fs *flag.FlagSet) *client {
	c := &client{}
	fs.StringVar(&c.addr, "addr", cmp.Or(os.Getenv("DUCKRAFT_ADDR"), agent.DefaultAPIAddr), "API address of the node to talk to ($DUCKRAFT_ADDR)")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Second, "give up after this long")
	c.cookie = cookieFlags(fs)
	return c
}

// open derives the identity from the cookie (slow on purpose, so once, and only now that the
// flags are parsed) and returns the API client.
func (c *client) open() (*api.Client, error) {
	c.addr = apiAddr(c.addr)
	if c.api != nil {
		return c.api, nil
	}
	cookie, err := c.cookie.Load()
	if err != nil {
		return nil, err
	}
	id, err := wire.FromCookie(cookie)
	if err != nil {
		return nil, err
	}
	c.api = api.NewClient(id)
	return c.api, nil
}

// call sends one request to the node and decodes its answer.
func (c *client) call(method, path string, in, out any) error {
	cl, err := c.open()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	return cl.Do(ctx, c.addr, method, path, in, out)
}

func runConnect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	c := clientFlags(fs)
	pos, err := parse(fs, args, "OTHER_API_ADDR")
	if err != nil {
		return err
	}
	if err := c.call(http.MethodPost, "/v1/connect", api.ConnectRequest{Addr: pos[0]}, nil); err != nil {
		return err
	}
	fmt.Println("true")
	return nil
}

func runMembers(args []string) error {
	fs := flag.NewFlagSet("members", flag.ContinueOnError)
	c := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var ms []api.MemberStatus
	if err := c.call(http.MethodGet, "/v1/members", nil, &ms); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(ms)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tSUFFRAGE\tLOG\tREACHABLE\tLAST CONTACT\tAPI\tRAFT")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Role, m.Suffrage, cmp.Or(m.Log, "-"), yesNo(m.Reachable), lastContact(m), m.APIAddr, m.RaftAddr)
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	if d < time.Second {
		return "now"
	}
	return d.Round(time.Second).String() + " ago"
}

func runForget(args []string) error {
	fs := flag.NewFlagSet("forget", flag.ContinueOnError)
	c := clientFlags(fs)
	pos, err := parse(fs, args, "NAME")
	if err != nil {
		return err
	}
	if err := c.call(http.MethodPost, "/v1/forget", api.NameRequest{Name: pos[0]}, nil); err != nil {
		return err
	}
	fmt.Printf("forgot %s\n", pos[0])
	return nil
}

func runLeave(args []string) error {
	fs := flag.NewFlagSet("leave", flag.ContinueOnError)
	c := clientFlags(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := c.call(http.MethodPost, "/v1/leave", nil, nil); err != nil {
		return err
	}
	fmt.Println("left the cluster; the node carries on as a cluster of one")
	return nil
}

// lastContact is a member's LAST CONTACT: "now" for one that answered this listing (the listing
// waits for the slowest member, so its time would read "1s ago" beside a member that does not
// answer), else how long ago it was last heard from.
func lastContact(m api.MemberStatus) string {
	if m.Reachable {
		return "now"
	}
	return ago(m.LastContact)
}

// apiAddr takes a node's address as HOST:PORT also when given as a URL (http://HOST:PORT/, as
// a browser shows it): "http" was read as a host and failed on DNS (found by an outside probe).
func apiAddr(v string) string {
	for _, scheme := range []string{"https://", "http://"} {
		if rest, ok := strings.CutPrefix(v, scheme); ok {
			return strings.TrimSuffix(rest, "/")
		}
	}
	return v
}
