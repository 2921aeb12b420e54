package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/duckraft/duckraft/wire"
)

// Client calls a node's API over the cookie-keyed channel. The CLI uses it, and so do nodes
// calling each other (forwarding to the leader, joining, probing members).
type Client struct {
	http *http.Client
}

// NewClient makes a client proving id.
func NewClient(id *wire.Identity) *Client {
	t := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return id.Dial(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: t}}
}

// APIError is a node's refusal, with its status and its message for the user.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// ErrLost is in Stream's error when the stream broke after the node had answered: the node was
// reached, which a caller following it needs to tell from a node it cannot reach at all.
var ErrLost = errors.New("lost the connection")

// ErrorBody is how every error leaves the API.
type ErrorBody struct {
	Error string `json:"error"`
}

// Do sends in (as JSON, unless nil) to addr's path and decodes the answer into out (unless nil).
func (c *Client) Do(ctx context.Context, addr, method, path string, in, out any) error {
	_, err := c.do(ctx, addr, method, path, in, out)
	return err
}

// IndexHeader carries, on every answer of a node, the index of the last log entry its state
// holds when it answered: the leader's answer to a write says where the write is in the log.
const IndexHeader = "Duckraft-Index"

// Forward posts in to addr's path, as Do, and returns the answering node's state index
// (IndexHeader; 0 when it sent none).
func (c *Client) Forward(ctx context.Context, addr, path string, in, out any) (uint64, error) {
	h, err := c.do(ctx, addr, http.MethodPost, path, in, out)
	if err != nil {
		return 0, err
	}
	index, _ := strconv.ParseUint(h.Get(IndexHeader), 10, 64)
	return index, nil
}

func (c *Client) do(ctx context.Context, addr, method, path string, in, out any) (http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, addr, method, path, body, "application/json")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return resp.Header, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, fmt.Errorf("undecodable answer from %s%s: %w", addr, path, err)
	}
	return resp.Header, nil
}

// Stream sends body and calls each with every line of JSON the node streams back, until the
// stream ends. A stream cut before the node ended it is an error: the node went away.
func (c *Client) Stream(ctx context.Context, addr, method, path string, body io.Reader, contentType string, each func(json.RawMessage) error) error {
	resp, err := c.send(ctx, addr, method, path, body, contentType)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w to %s: %w", ErrLost, addr, err)
		}
		if err := each(raw); err != nil {
			return err
		}
	}
}

func (c *Client) send(ctx context.Context, addr, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			err = ue.Unwrap() // drop net/http's "Get https://...:" prefix; Explain names the address
		}
		return nil, wire.Explain(addr, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var eb ErrorBody
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(raw, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("%s answered %s: %s", addr, resp.Status, bytes.TrimSpace(raw))
		}
		return nil, &APIError{Status: resp.StatusCode, Message: eb.Error}
	}
	return resp, nil
}
