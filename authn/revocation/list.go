package revocation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/internal/fetch"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// List is a revocation list kept up to date from its source, a file or a
// URL, for lookups from any number of goroutines. A refresh that loads a
// new document swaps the whole set at once: lookups never wait for it,
// and never see half of it. A refresh that fails keeps the last good set.
type List struct {
	src      source
	deny     bool          // on_unavailable: deny
	maxStale time.Duration // zero: no age limit
	every    time.Duration
	now      func() time.Time
	logger   *zap.Logger // carries the source's field

	current atomic.Pointer[snapshot] // the last good set; nil until a load succeeds
	closed  atomic.Bool

	// loadMu makes refreshes one at a time; it guards src's state and
	// parseErr.
	loadMu sync.Mutex
	// parseErr is why the document the source holds now was refused,
	// while the source reports it unchanged; nil when it was taken.
	parseErr error

	mu                  sync.Mutex // guards the fields below
	refreshes, failures uint64
	consecutiveFailures int
	subscribers         map[chan uint64]struct{}

	// firstDone is closed when the first refresh is over, failed or not.
	firstDone chan struct{}

	ctx    context.Context // parent of every load; Close cancels it
	cancel context.CancelFunc
	wg     sync.WaitGroup // the refresh loop and Refresh calls under way
}

// snapshot is the set in force and what is known of it.
type snapshot struct {
	set         *Set
	version     uint64            // 1 for the first set loaded, one more at each change
	digest      [sha256.Size]byte // of the document, to tell a change
	refreshedAt time.Time         // the last successful refresh, by the list's clock
}

// source is where a list comes from.
type source interface {
	// load returns the document, or nil when the source can tell it is
	// unchanged since the last load that returned one, unless force.
	load(ctx context.Context, force bool) ([]byte, error)
	// same reports whether other reads the same document.
	same(other source) bool
	// field names the source in logs.
	field() zap.Field
	// close releases idle connections.
	close()
}

// Option changes how New builds a List.
type Option func(*options)

type options struct {
	now      func() time.Time
	client   *http.Client
	logger   *zap.Logger
	previous *List
}

// WithClock replaces time.Now for max_stale and the age in Status. Tests
// use it to move time without sleeping.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithHTTPClient sets the client a URL is fetched with, instead of one
// built from the ssl settings.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithLogger sets the logger for loads and failed refreshes.
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithPrevious starts the new list with the last good set of previous
// when both read the same file or URL, as a reload needs: a URL that is
// down then does not leave the proxy without a list. Versions go on from
// previous's.
func WithPrevious(previous *List) Option { return func(o *options) { o.previous = previous } }

// New builds the list cfg describes and starts refreshing it every
// refresh_interval. A file is read before New returns, and a file that
// cannot be read or parsed is an error: it is configuration. A URL is
// fetched in the background, and New returns at once: until the first
// fetch succeeds, on_unavailable applies. Errors name the option
// ("url: ...", "ssl.ca_file: ..."). configs.Validate is expected to have
// run. Close stops the refreshing.
func New(cfg configs.Revocation, opts ...Option) (*List, error) {
	o := &options{now: time.Now, logger: zap.NewNop()}
	for _, opt := range opts {
		opt(o)
	}
	l := &List{
		deny:      cfg.Deny(),
		maxStale:  time.Duration(cfg.MaxStale),
		every:     cfg.RefreshEvery(),
		now:       o.now,
		firstDone: make(chan struct{}),
	}
	switch cfg.OnUnavailable {
	case "", configs.RevocationDeny, configs.RevocationAllow:
	default:
		return nil, fmt.Errorf("on_unavailable: %q is not one of deny, allow", cfg.OnUnavailable)
	}
	switch {
	case cfg.File != "" && cfg.URL != "":
		return nil, errors.New("file, url: give one, not both")
	case cfg.File != "":
		l.src = &fileSource{path: cfg.File}
	case cfg.URL != "":
		u, err := url.Parse(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("url: %w", err)
		}
		f, err := fetch.New(u, fetch.Options{Headers: cfg.Headers, SSL: cfg.SSL, Client: o.client, MaxBody: MaxDocumentSize,
			Logger: o.logger.With(zap.String("url", u.Redacted()))})
		if err != nil {
			if errors.Is(err, fetch.ErrNotHTTP) {
				return nil, fmt.Errorf("url: %w", err)
			}
			return nil, err
		}
		l.src = &urlSource{fetcher: f, url: u.Redacted()}
	default:
		return nil, errors.New("give file or url")
	}
	l.logger = o.logger.With(l.src.field())
	if prev := o.previous; prev != nil && prev.src.same(l.src) {
		l.current.Store(prev.current.Load())
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())

	_, isFile := l.src.(*fileSource)
	if isFile {
		// Not refresh: a failure here is New's error, not a warning
		// about a list in force.
		started := time.Now()
		next, changed, err := l.load(l.ctx, true)
		if err != nil {
			l.cancel()
			return nil, fmt.Errorf("file: %w", err)
		}
		l.record(next, changed, nil, time.Since(started))
		close(l.firstDone)
	}
	l.wg.Add(1)
	go l.refreshLoop(!isFile)
	return l, nil
}

// refreshLoop refreshes the list every refresh_interval, at once first
// when now, until Close.
func (l *List) refreshLoop(now bool) {
	defer l.wg.Done()
	if now {
		l.refresh(l.ctx, false)
		close(l.firstDone)
	}
	ticker := time.NewTicker(l.every)
	defer ticker.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-ticker.C:
			l.refresh(l.ctx, false)
		}
	}
}

// FirstRefreshDone is closed once the first load is over, failed or not:
// at once for a file, which New reads; after the first fetch of a URL. A
// proxy may wait on it, for a while, before it serves, so that
// on_unavailable: deny does not refuse the first clients.
func (l *List) FirstRefreshDone() <-chan struct{} { return l.firstDone }

// Refresh reads the file again, even when it looks unchanged, or fetches
// the URL, at once, as a reload (SIGHUP) asks, and returns why it failed.
// A failure keeps the last good set. It blocks for at most the fetch
// timeout, and waits for a refresh under way.
func (l *List) Refresh(ctx context.Context) error {
	l.mu.Lock()
	if l.closed.Load() {
		l.mu.Unlock()
		return errors.New("revocation list closed")
	}
	l.wg.Add(1) // under mu, so that Close waits for it
	l.mu.Unlock()
	defer l.wg.Done()
	// Close ends this refresh too, as it ends the loop's.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.ctx, cancel)()
	return l.refresh(ctx, true)
}

// refresh loads the document, and records and logs the outcome. A load
// cut short by its context (Close, or the caller's) records nothing: it
// says nothing of the source.
func (l *List) refresh(ctx context.Context, force bool) error {
	l.loadMu.Lock()
	defer l.loadMu.Unlock()
	started := time.Now()
	next, changed, err := l.load(ctx, force)
	if err != nil && ctx.Err() != nil {
		return err
	}
	l.record(next, changed, err, time.Since(started))
	return err
}

// load reads the document, and parses it when it changed. On success it
// returns the snapshot to publish, a copy of the current one when the
// set is the same; l.loadMu is held.
func (l *List) load(ctx context.Context, force bool) (next *snapshot, changed bool, err error) {
	doc, err := l.src.load(ctx, force)
	if err != nil {
		return nil, false, err
	}
	next = &snapshot{}
	cur := l.current.Load()
	if cur != nil {
		*next = *cur
	}
	if doc == nil { // the source holds what it held at the last load
		return next, false, l.parseErr
	}
	// Paced (see refreshCPUShare), so that a new document leaves the
	// cores to the connections; the set in force stays until the new one
	// is whole.
	pace := newPacer(ctx)
	digest := hashDocument(doc, pace)
	if cur != nil && digest == cur.digest {
		l.parseErr = nil
		return next, false, nil
	}
	// Once ctx is done, the parse goes on unpaced, and its set is taken:
	// the source has marked the document seen.
	set, err := parse(doc, pace)
	if l.parseErr = err; err != nil {
		return nil, false, err
	}
	next.set, next.digest, next.version = set, digest, next.version+1
	return next, true, nil
}

// hashPiece is how much of a document is hashed between two looks of its
// pacer at the clock: some 30 µs of SHA-256.
const hashPiece = 64 << 10

// hashDocument is the SHA-256 of doc, hashed in pieces paced by p.
func hashDocument(doc []byte, p *pacer) (digest [sha256.Size]byte) {
	h := sha256.New()
	for len(doc) > 0 {
		n := min(len(doc), hashPiece)
		h.Write(doc[:n])
		doc = doc[n:]
		p.check()
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// record publishes next after a successful load, counts the outcome,
// tells the subscribers of a new set, and logs.
func (l *List) record(next *snapshot, changed bool, err error, took time.Duration) {
	l.mu.Lock()
	if err == nil {
		next.refreshedAt = l.now()
		l.current.Store(next)
		l.refreshes++
		l.consecutiveFailures = 0
	} else {
		l.failures++
		l.consecutiveFailures++
	}
	failures := l.consecutiveFailures
	if changed {
		for ch := range l.subscribers {
			notify(ch, next.version)
		}
	}
	l.mu.Unlock()

	switch {
	case err != nil:
		fields := []zap.Field{zap.Error(err), zap.Int("consecutive_failures", failures)}
		if refused, ok := errors.AsType[*fetch.RedirectRefusedError](err); ok {
			fields = append(fields, zap.String("redirect", refused.Target))
		}
		l.logger.Warn("revocation list refresh failed; "+l.stateAfterFailure(), fields...)
	case changed:
		jti, sub, clientID, issuedBefore := next.set.counts()
		l.logger.Info("revocation list loaded", zap.Uint64("version", next.version), zap.Int("entries", next.set.Len()),
			zap.Int("jti", jti), zap.Int("sub", sub), zap.Int("client_id", clientID), zap.Int("issued_before", issuedBefore),
			zap.Duration("duration", took))
	default:
		l.logger.Debug("revocation list unchanged", zap.Uint64("version", next.version))
	}
}

// stateAfterFailure says what new connections get after a failed refresh.
func (l *List) stateAfterFailure() string {
	switch {
	case l.inForce(l.current.Load()):
		return "the last good list stays in force"
	case l.deny:
		return "no list in force: new connections are refused (on_unavailable: deny)"
	case l.current.Load() != nil:
		return "the last good list stays in force (on_unavailable: allow)"
	}
	return "no list in force: new connections are let in (on_unavailable: allow)"
}

// notify sends version to ch without waiting: a subscriber that has not
// taken the last version gets this one instead, as a scan for the newer
// list covers the older.
func notify(ch chan uint64, version uint64) {
	select {
	case ch <- version:
	default:
		select {
		case <-ch:
		default:
		}
		ch <- version // room now: sends happen under l.mu only
	}
}

// inForce reports whether s may be applied with on_unavailable: deny: it
// exists, is not older than max_stale, and the list is not closed.
func (l *List) inForce(s *snapshot) bool {
	if s == nil || l.closed.Load() {
		return false
	}
	return l.maxStale == 0 || l.now().Sub(s.refreshedAt) <= l.maxStale
}

// Revoked is the check of a new connection: whether t is revoked by the
// list in force, and by which entry. When no list is in force (none
// loaded yet, the last good one older than max_stale, or the list
// closed), on_unavailable decides: deny revokes every token, with
// ReasonUnavailable; allow applies the last good list, if there is one.
// It allocates nothing and never waits for a refresh.
func (l *List) Revoked(t Token) (Reason, bool) {
	s := l.current.Load()
	if l.deny && !l.inForce(s) {
		return ReasonUnavailable, true
	}
	if s == nil {
		return "", false
	}
	return s.set.Match(t)
}

// Matches reports whether the last good list revokes t, and by which
// entry, whatever its age: the check for sessions already connected,
// which a list that cannot be refreshed does not end.
func (l *List) Matches(t Token) (Reason, bool) {
	s := l.current.Load()
	if s == nil {
		return "", false
	}
	return s.set.Match(t)
}

// Subscribe returns a channel that receives the version of each new set
// a refresh loads, so that the proxy can end the sessions it revokes
// (Matches), and a function that ends the subscription. Versions a
// subscriber has not taken are replaced by the latest: it may miss a
// version, never the last. The channel is closed by cancel and by Close.
func (l *List) Subscribe() (versions <-chan uint64, cancel func()) {
	ch := make(chan uint64, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		close(ch)
		return ch, func() {}
	}
	if l.subscribers == nil {
		l.subscribers = make(map[chan uint64]struct{})
	}
	l.subscribers[ch] = struct{}{}
	return ch, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if _, ok := l.subscribers[ch]; ok {
			delete(l.subscribers, ch)
			close(ch)
		}
	}
}

// Status is the state of a list, for metrics and readiness probes.
type Status struct {
	// InForce is true when new connections are checked against a list:
	// one is loaded, no older than max_stale, and the list is not closed.
	// When false, on_unavailable decides.
	InForce bool
	// Entries counts the entries of the last good list; zero before one.
	Entries int
	// Version is the last good list's version: 1 for the first loaded,
	// one more at each change; zero before one.
	Version uint64
	// Age is the time since the last successful refresh; zero before one.
	Age time.Duration
	// Refreshes counts successful refreshes, changed or not.
	Refreshes uint64
	// Failures counts failed refreshes.
	Failures uint64
	// ConsecutiveFailures counts failed refreshes since the last success.
	ConsecutiveFailures int
}

// Status reports the list's state. It is safe for concurrent use.
func (l *List) Status() Status {
	s := l.current.Load()
	l.mu.Lock()
	st := Status{InForce: l.inForce(s), Refreshes: l.refreshes, Failures: l.failures, ConsecutiveFailures: l.consecutiveFailures}
	l.mu.Unlock()
	if s != nil {
		st.Entries, st.Version, st.Age = s.set.Len(), s.version, l.now().Sub(s.refreshedAt)
	}
	return st
}

// Close stops the refreshing and waits for a refresh under way, closes
// the subscribers' channels, and releases idle connections. After it,
// Revoked treats the list as not in force, since it is refreshed no
// more. It may be called more than once, and on a nil *List (no list
// configured), where it does nothing.
func (l *List) Close() {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.closed.Store(true)
	for ch := range l.subscribers {
		close(ch)
	}
	l.subscribers = nil
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
	l.src.close()
}

// fileSource is a revocation document in a file.
type fileSource struct {
	path string
	// seen is the file as it was read last, or nil: the next load reads
	// it whatever it looks like.
	seen os.FileInfo
}

func (s *fileSource) load(_ context.Context, force bool) ([]byte, error) {
	info, err := os.Stat(s.path)
	if err != nil {
		s.seen = nil
		return nil, err
	}
	if !force && s.seen != nil && sameFile(s.seen, info) {
		return nil, nil
	}
	s.seen = nil
	doc, info, err := readFile(s.path)
	if err != nil {
		return nil, err
	}
	s.seen = info
	return doc, nil
}

// sameFile reports whether a and b are the same file, unchanged: the same
// inode (a file renamed over it, as editors and Kubernetes volumes do, is
// another), size and modification time.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// readFile reads a regular file of at most MaxDocumentSize bytes, and
// returns it with its state when it was opened.
func readFile(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		// A FIFO or a device may never end.
		return nil, nil, fmt.Errorf("%s is not a regular file", path)
	}
	if info.Size() > MaxDocumentSize {
		return nil, nil, fmt.Errorf("%s: %d bytes is over the %d-byte limit", path, info.Size(), MaxDocumentSize)
	}
	var doc bytes.Buffer
	doc.Grow(int(info.Size()) + bytes.MinRead) // the file and the read that finds its end
	if _, err := doc.ReadFrom(io.LimitReader(f, MaxDocumentSize+1)); err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	if doc.Len() > MaxDocumentSize { // it grew while read
		return nil, nil, fmt.Errorf("%s: over the %d-byte limit", path, MaxDocumentSize)
	}
	return doc.Bytes(), info, nil
}

func (s *fileSource) same(other source) bool {
	o, ok := other.(*fileSource)
	return ok && o.path == s.path
}

func (s *fileSource) field() zap.Field { return zap.String("file", s.path) }

func (s *fileSource) close() {}

// urlSource is a revocation document at a URL.
type urlSource struct {
	fetcher *fetch.Fetcher
	url     string // redacted, for logs
	// seen identifies the document fetched last, when the server said
	// what does (ETag, Last-Modified): the next fetch asks for it only if
	// it changed.
	seen fetch.Validators
}

func (s *urlSource) load(ctx context.Context, force bool) ([]byte, error) {
	if force {
		s.seen = fetch.Validators{}
	}
	doc, seen, err := s.fetcher.GetIfModified(ctx, s.seen)
	if err != nil {
		return nil, err
	}
	s.seen = seen
	return doc, nil
}

func (s *urlSource) same(other source) bool {
	o, ok := other.(*urlSource)
	return ok && o.fetcher.URL() == s.fetcher.URL()
}

func (s *urlSource) field() zap.Field { return zap.String("url", s.url) }

func (s *urlSource) close() { s.fetcher.Close() }
