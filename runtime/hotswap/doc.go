// Package hotswap is the SDK a duck program is written on: it lets a running
// Go process be replaced by a new build of itself with no request lost and no
// state forgotten, the way BEAM replaces a module under a running VM.
//
// It wraps github.com/cloudflare/tableflip. A duck calls Run with its state
// type S; inside the setup function it serves HTTP (Duck.Serve), may open
// more inherited listeners (Duck.Listen) and starts its own goroutines, which
// change state only through Duck.State. When setup returns the duck is Ready.
//
// # The swap
//
// On SIGHUP the running generation starts the new process at once:
// tableflip re-executes os.Args[0], passing it, through tableflip's Fds, the
// file the state will be written in and a gate (a Unix socket pair) to ask
// for it through. The old generation goes on serving meanwhile, so the new
// process's exec and the Go runtime's start, most of a swap, hold no
// request. Nor does the duck's setup: the new generation greets the old one
// through the gate and runs its setup first, with a State whose value has
// still to come, and asks for the state once setup has returned or reads
// the state (Read waits for it; Update waits for Ready anyway). A Read
// anywhere before the state has come, in a goroutine setup started too,
// asks at once. A setup that takes its time, or hangs until the ready
// timeout, or fails before it reads the state, holds no request and freezes
// nothing: the old generation serves on, and a failure is reported once.
// So setup runs while the old generation is fully live, and in a new
// generation that may never become Ready (its state fails to decode, or it
// times out): a setup must not commit effects outside the state (a schema
// change in a database, a file others read) before it has read the state,
// or must make them safe for the old version to run beside. Only once asked does the old
// generation stop accepting (it closes its listener;
// tableflip keeps a copy of the socket, so the kernel queues new connections
// for the next process), stop reading new requests on open connections
// (a request that comes now waits in its socket's kernel buffer), let the
// requests already read finish (but detached ones, see below), freeze the
// state (Update blocks), snapshot it as JSON with its schema number into the
// file, and say so through the gate. The new generation reads it, lets the
// duck's setup finish and becomes Ready. The wait for running requests
// counts in the new generation's DUCK_READY_TIMEOUT, which runs from its
// start. The greeting goes only to an old generation that said it takes one
// (it sets DUCK_NEXT_GENERATION, with its own PID, for the new process,
// which also learns its Generation there before the state has come); a new
// generation started by an older SDK asks for the state before its setup,
// as that SDK expects.
//
// Until asked for, the file says the state is pending, which a new
// generation built on an SDK from before the gate does not understand: it
// reads the file at once, fails and exits. The old generation, which has
// frozen nothing yet, then starts it again the way that SDK expects, the
// state frozen and written before the new process starts (the order
// before the gate), and logs that it did; so does it when the gate could
// not be made. A new version that exits before asking for any other
// reason without greeting the old one first (it failed before its setup,
// or it is on an SDK from before the greeting) is started twice so, and the
// failure reported once; one that greeted is not started again. A
// generation on this SDK takes a state file that is complete at once, as
// an older SDK's generation hands it over.
//
// If the new process becomes Ready, each of the old process's HTTP
// connections moves to it as soon as it is between two requests: an idle
// one at once, with any request waiting in its buffer; one in the middle
// of a request's line or headers at once too, with the bytes the old
// process has read of that request, which travel with the descriptor (the
// new process reads them first, and runs the request whole). A request
// whose headers end during the swap, its body complete or still coming,
// does not run in the old process: it waits for the swap's outcome and
// moves with its connection, carrying its headers and the part of its body
// read, and the new process runs it whole; the old process does not wait
// for the rest of its body. A request that reached the duck's handler
// before the swap finishes in the old process (its handler may have
// changed the state), and its connection moves once that request is
// complete, body included. A handler that returns without reading a body
// still coming keeps the old process until the client has sent it: net/http
// reads and drops the rest before it writes the response, so until then
// the answer is only in net/http's buffer and cannot travel with the
// socket (the log's exit line counts connections that moved mid-request,
// and requests forwarded).
// Bytes travel only to a new process that said it takes them, and at most
// 16 KiB of them: with more, or a new process on an older SDK, the request
// is forwarded to the new process by the old one, as before. The socket
// itself moves: its descriptor travels over a Unix socket pair whose other
// end the new process inherits through tableflip (SCM_RIGHTS), and the old
// process closes only its own descriptor, which sends the client nothing.
// No connection is closed under a client and no request is split between
// two processes, whatever the client's idle time. The idle connections
// leave together, as soon as the new process is Ready: up to 64
// descriptors in one message, sent by the goroutine that ran the swap,
// rather than one message from each connection's own goroutine (a new
// process on an older SDK, which has room for one, gets them one at a
// time). The old process exits as soon as every connection has moved,
// without waiting for net/http to close its copies, so nothing waits for
// idle clients.
// If the new process exits or is not Ready within the ready timeout, the
// old one thaws, keeps serving with its state and logs why on stderr; if it
// exits while it waits for the state, the old one closes the gate, or
// stops waiting for running requests, and thaws the same way. A new
// process that is told through the closed gate that no state will come
// exits having changed nothing.
//
// A connection moves only when the SDK knows which of its bytes net/http
// holds (none, or the start of a request it has not yet handed to a
// handler): it follows where each HTTP/1.x request ends (Content-Length and
// chunked framing) in the bytes read. Connections it cannot move fall back
// to what was done before: their next request is forwarded to the new
// process and answered with "Connection: close", and idle ones are closed
// after DrainBound. They are: connections whose requests it cannot frame
// (HTTP/2's preface, a transfer coding other than chunked), every
// connection when the new process does not serve with Duck.Serve or was
// built on an SDK from before connections moved (it never answers on the
// channel), and a send that fails. Hijacked connections (WebSockets and
// the like) belong to their handler and end with the old process, as do
// connections accepted from Duck.Listen. Duck.Serve serves plain HTTP/1.1;
// TLS, if any, ends in front of it. The exit line of each old process
// counts the connections that moved, fell back and were hijacked, and each
// fallback is logged with its reason. The old process also reports the
// counts, the fallbacks by reason (FallbackReasons), to its supervisor
// (EventHandedOver on DUCK_REPORT_FD), which adds them up for the node's
// metrics.
//
// # Long requests
//
// A swap freezes the state only when no running request can change it any
// more, so a request that runs long (a streaming response, a long poll, a
// download) would hold the swap, and every other client's requests with
// it, until it ends. Its handler calls Detach(r) once it will make no more
// Update: the swap then does not wait for it. It runs to its end in the old
// generation, reading the state as it was handed over (Read does not wait),
// while the new generation serves everyone else; its connection moves once
// it has ended, and the old generation exits then, or DrainBound and 5 s
// after the new one became Ready, closing what still runs. An Update after
// Detach in a generation that has handed over waits for ever, like every
// Update there.
//
// Detach is not guessed from what a handler does. A handler that flushes a
// response part by part may still change the state afterwards (a long poll
// that counts the event it waited for, a stream that records how far it
// got), and detached behind its back its Update would wait for ever: the
// request would hang instead of finishing. Only its author knows that it
// will make no more Update. A swap that has waited 100 ms for running
// requests says so in the log, with how many.
//
// Idle keep-alive connections are never closed on SIGHUP (no
// http.Server.Shutdown, no SetKeepAlivesEnabled(false)): closing a
// connection that looks idle races with the client's next request, and a
// lost POST cannot be retried. Measured on this kind of machine (duckraft
// DESIGN, "The keep-alive trap"), draining with Shutdown failed 13 of 9,000
// keep-alive requests across 20 swaps; BenchmarkSwap here shows the same
// (bare tableflip fails tens of requests per 20 swaps, this SDK none).
// Forwarding with "Connection: close", the way before connections moved,
// still lost the POSTs of clients idle longer than DrainBound.
//
// State written by the new process is never visible to the old one and the
// other way round: the new process keeps its state frozen until it is Ready,
// so a generation that fails to start has changed nothing (nothing lost,
// nothing counted twice). A new version whose state layout differs bumps
// Config.Schema and supplies Config.Migrate, Erlang's code_change, and
// Config.Downgrade, code_change({down, Vsn}): at every hand-over and stop it
// renders the state in the older schemas it knows, the snapshot carries
// those too, and a swap or restart back to an older version starts from its
// own schema's rendering. Without one, going back is refused and the newer
// generation carries on.
//
// # Environment contract
//
// A supervisor starts the first generation by an absolute, stable path (the
// next build is renamed over it before SIGHUP) with these variables; every
// later generation inherits the environment, stdout and stderr of the one
// before it.
//
//	DUCK_ADDR           HTTP address for Duck.Serve (default 127.0.0.1:8080).
//	DUCK_VERSION        version string the duck reports (default "dev").
//	DUCK_VERSION_FILE   if set, a file whose trimmed content overrides
//	                    DUCK_VERSION; read by each generation at start, so a
//	                    supervisor writes it before SIGHUP (environment
//	                    variables are copied from the old generation and
//	                    cannot carry the new version).
//	DUCK_PIDFILE        tableflip writes the PID of each generation here
//	                    when it becomes Ready (atomically, by rename); a
//	                    generation whose swap failed writes its own back,
//	                    as the new one may have died after writing it.
//	                    During a swap the file being replaced has a second
//	                    name, <file>.prev.<new PID>, removed once the old
//	                    generation has exited (so the rename at Ready does
//	                    not free its inode), and the next one is written
//	                    ahead as <file>.<random>.
//	DUCK_READY_TIMEOUT  how long a new generation may take to become Ready,
//	                    from its start, which includes its wait for the old
//	                    generation's running requests; a Go duration
//	                    (default 10s); past it, it is killed.
//	DUCK_LIFELINE_FD    an inherited fd, the read end of a pipe whose write
//	                    end the supervisor holds; on EOF (the supervisor
//	                    died) the duck stops gracefully. Every generation
//	                    inherits it through tableflip's Fds.
//	DUCK_REPORT_FD      an inherited fd, the write end of a pipe the supervisor
//	                    reads: a generation whose swap failed (it thawed and
//	                    carries on) writes a Report there, one line of JSON
//	                    ({"pid":N,"event":"swap failed","error":"..."}). Every
//	                    generation inherits it through tableflip's Fds. It is
//	                    how a supervisor learns a swap's outcome; the log line
//	                    says the same to a person and is not a contract.
//	DUCK_STATE_FILE     if set, the state is written here (atomically, with
//	                    an fsync) when the duck stops and at every hand-over,
//	                    and a first generation with no parent starts from it
//	                    when it exists. At a hand-over the write runs beside
//	                    the new generation's last steps (the state read,
//	                    setup, Ready), and the old generation exits only
//	                    once it is done.
//	DUCK_DESCRIBE       set to 1, Run prints the duck's Description (its state
//	                    schema and the older schemas Config.Downgrade renders)
//	                    as one line of JSON and returns, serving nothing: a
//	                    node asks this of each version it builds, so that a
//	                    rollout with no way back is refused before any swap.
//
// Besides the files above, tableflip passes each new generation the state
// (as "duckraft-state"), the gate it asks for the state through
// ("duckraft-state-gate") and, from a generation that serves HTTP, the
// channel its connections move through ("duckraft-conns"); none needs
// anything from the supervisor.
//
// Signals: SIGHUP swaps (a second SIGHUP during a swap is ignored and
// logged; one that comes while the previous generation still hands over
// waits for it to exit, as tableflip requires), SIGTERM and SIGINT stop
// gracefully. Signals are caught from the start, before the PID file names
// the process. Log lines go to stderr as
// log/slog text, one line per event.
package hotswap
