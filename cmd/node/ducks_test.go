package main

import (
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

func TestDuckURLIsOneAUserCanOpen(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8396": "http://127.0.0.1:8396",
		":8396":          "http://127.0.0.1:8396 (every interface)",
		"0.0.0.0:8396":   "http://127.0.0.1:8396 (every interface)",
		"[::]:8396":      "http://127.0.0.1:8396 (every interface)",
		"[::1]:8396":     "http://[::1]:8396",
		"duck.local:80":  "http://duck.local:80",
	} {
		if got := duckURL(addr); got != want {
			t.Errorf("duckURL(%q) = %q, want %q", addr, got, want)
		}
	}
}

func TestPromotionNoteOnlyWhenThePromotionIsLate(t *testing.T) {
	now := time.Now()
	r := &rollout.Rollout{State: rollout.Paused, Canary: true, PausedAt: now.Add(-10 * time.Second), Policy: rollout.Policy{AutoPromoteAfter: 3 * time.Second}}
	if note := promotionNote(r, now); !strings.Contains(note, "the promotion is 7s past due") {
		t.Fatalf("note %q", note)
	}
	for _, c := range []func(*rollout.Rollout){
		func(r *rollout.Rollout) { r.PausedAt = now.Add(-4 * time.Second) }, // due a moment ago
		func(r *rollout.Rollout) { r.Policy.AutoPromoteAfter = 0 },          // promoted by hand
		func(r *rollout.Rollout) { r.PauseAfter = 1 },                       // paused by hand
		func(r *rollout.Rollout) { r.State = rollout.Rolling },
	} {
		r2 := *r
		c(&r2)
		if note := promotionNote(&r2, now); note != "" {
			t.Errorf("%+v: note %q, want none", r2, note)
		}
	}
}
