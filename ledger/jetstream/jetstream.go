package jetstream

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// Sentinel errors.
var (
	// ErrFenced is matched (errors.Is) by the error of a write that another writer's
	// [Ledger.Lead] fenced off: the stream or the state bucket moved on without this
	// writer. The error also matches [ledger.ErrWriteFailed]: the writer accepts no
	// further writes until Lead is called again.
	ErrFenced = errors.New("ledger/jetstream: another writer leads the stream")
	// ErrReadOnly is returned by the write methods of a ledger that does not lead: call
	// [Ledger.Lead] first.
	ErrReadOnly = errors.New("ledger/jetstream: this ledger is read-only; call Lead before writing")
)

// Message headers walflow sets on the stream's messages.
const (
	// hdrTx carries the commit LSN of the message's transaction, in decimal.
	hdrTx = "Walflow-Tx"
	// hdrEnd marks the last message of a transaction: "<first sequence> <end LSN>".
	hdrEnd = "Walflow-End"
	// hdrID identifies the message's event: "<commit LSN>/<index in the transaction>".
	hdrID = "Walflow-Id"
	// stateKey is the state bucket's key of the writer's bookkeeping.
	stateKey = "state"
)

// Options configures a JetStream ledger.
type Options struct {
	// Conn is the NATS connection; required. The ledger does not close it.
	Conn *nats.Conn
	// Stream is the JetStream stream's name; "WALFLOW" by default. Open creates it when
	// missing, unless ReadOnly.
	Stream string
	// ReadOnly opens the ledger on an existing stream and state bucket without creating or
	// updating them: Replicas and DuplicateWindow are ignored, the stream's configuration
	// stays as its writers set it, Open fails with an error wrapping
	// jetstream.ErrStreamNotFound (or jetstream.ErrBucketNotFound) when they are missing,
	// and Lead fails with ErrReadOnly. For tools that read a stream beside its writers.
	ReadOnly bool
	// Subject is the subject the events are published on; "walflow.<stream>.events" (the
	// stream name in lower case) by default. It must be the stream's only subject.
	Subject string
	// StateBucket is the key-value bucket holding the writer's bookkeeping;
	// "<stream>_STATE" by default.
	StateBucket string
	// Replicas is the stream's and the bucket's replication; 1 by default. Use 3 in a
	// three-server cluster: a write is then acknowledged once two servers stored it.
	Replicas int
	// DuplicateWindow is the stream's duplicate window (JetStream's Duplicates setting),
	// which Open sets when it creates or updates the stream; 2 minutes by default. The
	// ledger's writer does not rely on it: it sets no Nats-Msg-Id, so the window dedupes
	// only messages that other publishers give an id. A batch published twice is refused
	// by its expected last sequence, and a writer that took over with [Ledger.Lead] checks
	// replayed events against the messages already in the stream by their Walflow-Id and
	// publishes only the rest (see the package documentation).
	DuplicateWindow time.Duration
	// Indexer gives each event its index keys; nil indexes nothing.
	Indexer ledger.Indexer
	// IndexerVersion identifies what Indexer computes: a channel index stored in IndexDir
	// with another version is rebuilt. Change it whenever Indexer could give an event
	// other keys (walflow derives it from the tables' channel settings). Default "".
	IndexerVersion string
	// IndexDir is the directory of this node's channel index (a Pebble database of its
	// own), kept across restarts: Open catches it up from its checkpoint instead of
	// reading the whole stream, and rebuilds it from the stream when it is missing,
	// unreadable, or does not match the stream (see the package documentation). One
	// ledger at a time may use a directory: another gets a [ledger.InUseError]. Default
	// "": the channel index is kept in memory and rebuilt from the stream at every Open.
	IndexDir string
	// Logger receives the ledger's warnings; slog.Default() by default.
	Logger *slog.Logger
	// SpoolDir is where a transaction larger than SpoolMemory is spooled until CommitTx;
	// os.TempDir() by default.
	SpoolDir string
	// SpoolMemory is how many bytes of an open transaction are held in memory before it
	// spills to a file in SpoolDir; 8 MiB by default.
	SpoolMemory int
	// CacheEvents is how many of the latest events each ledger keeps in memory for
	// readers; 16384 by default. Reads of older events fetch them from the stream.
	CacheEvents int
	// AckTimeout bounds the wait for JetStream's acknowledgement of a published batch;
	// 30 s by default.
	AckTimeout time.Duration
	// BatchMessages is the most events the writer publishes in one JetStream atomic
	// batch; 1000 by default, the servers' default limit (max_batch_size in their
	// jetstream limits). A smaller value costs throughput; a larger one needs servers
	// configured to accept it.
	BatchMessages int
}

// defaultBatchMessages is Options.BatchMessages' default, nats-server's default
// max_batch_size.
const defaultBatchMessages = 1000

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (o *Options) setDefaults() error {
	if o.Conn == nil {
		return errors.New("ledger/jetstream: Options.Conn is nil; pass a connected *nats.Conn")
	}
	if o.Stream == "" {
		o.Stream = "WALFLOW"
	}
	if !nameRE.MatchString(o.Stream) {
		return fmt.Errorf("ledger/jetstream: stream name %q is invalid; use letters, digits, '-' and '_'", o.Stream)
	}
	if o.Subject == "" {
		o.Subject = "walflow." + strings.ToLower(o.Stream) + ".events"
	}
	if strings.ContainsAny(o.Subject, "*> \t") {
		return fmt.Errorf("ledger/jetstream: subject %q is invalid; use a literal subject without wildcards or spaces", o.Subject)
	}
	if o.StateBucket == "" {
		o.StateBucket = o.Stream + "_STATE"
	}
	if !nameRE.MatchString(o.StateBucket) {
		return fmt.Errorf("ledger/jetstream: state bucket name %q is invalid; use letters, digits, '-' and '_'", o.StateBucket)
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Replicas < 1 || o.Replicas > 5 {
		return fmt.Errorf("ledger/jetstream: replicas %d is invalid; use 1 to 5 (3 in a three-server cluster)", o.Replicas)
	}
	if o.DuplicateWindow == 0 {
		o.DuplicateWindow = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.IndexDir != "" && filepath.Clean(o.IndexDir) == filepath.Clean(cmp.Or(o.SpoolDir, os.TempDir())) {
		return fmt.Errorf("ledger/jetstream: IndexDir %q is also the spool directory; give the channel index a directory of its own", o.IndexDir)
	}
	if o.SpoolMemory <= 0 {
		o.SpoolMemory = 8 << 20
	}
	if o.CacheEvents <= 0 {
		o.CacheEvents = 16384
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 30 * time.Second
	}
	if o.BatchMessages == 0 {
		o.BatchMessages = defaultBatchMessages
	}
	if o.BatchMessages < 0 {
		return fmt.Errorf("ledger/jetstream: BatchMessages %d is invalid; use a positive number (at most the servers' max_batch_size, 1000 by default) or 0 for the default", o.BatchMessages)
	}
	return nil
}

// record is the state bucket's value: the bookkeeping as of the writer's last Sync,
// SetAcked or SetOrigin.
type record struct {
	Head          uint64        `json:"head"`
	LastCommitLSN uint64        `json:"last_commit_lsn"`
	LastEndLSN    uint64        `json:"last_end_lsn"`
	AckedLSN      uint64        `json:"acked_lsn"`
	Origin        ledger.Origin `json:"origin"`
}

func recordOf(st ledger.State) record {
	return record{Head: uint64(st.Head), LastCommitLSN: uint64(st.LastCommitLSN), LastEndLSN: uint64(st.LastEndLSN), AckedLSN: uint64(st.AckedLSN), Origin: st.Origin}
}

func (r record) state() ledger.State {
	return ledger.State{Head: event.Position(r.Head), LastCommitLSN: event.LSN(r.LastCommitLSN), LastEndLSN: event.LSN(r.LastEndLSN), AckedLSN: event.LSN(r.AckedLSN), Origin: r.Origin}
}

// Ledger is a [ledger.Ledger] on a JetStream stream. Open it with [Open]; it is read-only
// until [Ledger.Lead].
type Ledger struct {
	opts   Options
	log    *slog.Logger
	js     jetstream.JetStream
	stream jetstream.Stream
	kv     jetstream.KeyValue
	pub    *notify.Publisher
	idx    *index

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	iterMu sync.Mutex
	iter   jetstream.MessagesContext // the follower's; replaced when it stalls

	// mu guards leading, kvRec and kvRev, and orders the publications of a read-only
	// ledger's state.
	mu      sync.Mutex
	leading bool
	kvRec   record
	kvRev   uint64

	// wmu serializes the write methods (called from one goroutine) with Lead and Close.
	wmu sync.Mutex
	w   *writer // nil until Lead

	truncMu sync.Mutex

	// crashAfter, when positive, makes CommitTx stop after publishing that many events
	// of a transaction, as a writer that dies midway would (tests only).
	crashAfter int
}

var _ ledger.Ledger = (*Ledger)(nil)

// Open opens the ledger on opts.Stream, creating the stream and the state bucket when
// missing, and returns once its index has caught up with the stream. The ledger is
// read-only: reads, Wait and State work, writes fail with [ErrReadOnly] until
// [Ledger.Lead].
func Open(ctx context.Context, opts Options) (*Ledger, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(opts.Conn,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncTimeout(opts.AckTimeout))
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: open JetStream on the NATS connection: %w", err)
	}
	if opts.ReadOnly {
		return openReadOnly(ctx, js, opts)
	}
	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        opts.Stream,
		Description: "walflow ledger: one message per event, positions are sequences",
		Subjects:    []string{opts.Subject},
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		Duplicates:  opts.DuplicateWindow,
		DenyDelete:  true,
		// The writer publishes the events in atomic batches.
		AllowAtomicPublish: true,
	})
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: create or update stream %s on subject %s with %d replicas (is JetStream enabled on the server, and does another stream use the subject?): %w", opts.Stream, opts.Subject, opts.Replicas, err)
	}
	if !stream.CachedInfo().Config.AllowAtomicPublish {
		return nil, fmt.Errorf("ledger/jetstream: stream %s does not allow atomic batch publish after its update: the NATS servers are older than 2.12; upgrade them to nats-server 2.12 or newer", opts.Stream)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      opts.StateBucket,
		Description: "walflow ledger bookkeeping of stream " + opts.Stream,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: create or update key-value bucket %s: %w", opts.StateBucket, err)
	}
	return openOn(ctx, js, stream, kv, opts)
}

// openReadOnly opens the ledger on the existing stream and state bucket of opts, changing
// neither.
func openReadOnly(ctx context.Context, js jetstream.JetStream, opts Options) (*Ledger, error) {
	stream, err := js.Stream(ctx, opts.Stream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("ledger/jetstream: the stream %s does not exist (opened read-only, the ledger does not create it; a writer, such as walflow run, does): %w", opts.Stream, err)
		}
		return nil, fmt.Errorf("ledger/jetstream: look up the stream %s: %w", opts.Stream, err)
	}
	kv, err := js.KeyValue(ctx, opts.StateBucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("ledger/jetstream: the state bucket %s of the stream %s does not exist (opened read-only, the ledger does not create it; a writer, such as walflow run, does): %w", opts.StateBucket, opts.Stream, err)
		}
		return nil, fmt.Errorf("ledger/jetstream: look up the state bucket %s: %w", opts.StateBucket, err)
	}
	return openOn(ctx, js, stream, kv, opts)
}

// openOn opens the ledger on stream and kv and catches it up with the stream.
func openOn(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, kv jetstream.KeyValue, opts Options) (*Ledger, error) {
	lctx, cancel := context.WithCancel(context.Background())
	l := &Ledger{
		opts:   opts,
		log:    opts.Logger.With("stream", opts.Stream),
		js:     js,
		stream: stream,
		kv:     kv,
		pub:    notify.New(ledger.State{}),
		idx:    newIndex(opts.Indexer, opts.CacheEvents),
		ctx:    lctx,
		cancel: cancel,
	}
	if err := l.start(ctx); err != nil {
		// As Close does: the follower may have replaced its iterator (refollow) while
		// catching up, so the one to stop is the current one.
		cancel()
		l.iterMu.Lock()
		if l.iter != nil {
			l.iter.Stop()
		}
		l.iterMu.Unlock()
		l.wg.Wait()
		if l.idx.store != nil {
			_ = l.idx.store.close()
		}
		return nil, err
	}
	return l, nil
}

// start loads the state, starts the follower and the state watcher, and waits for the
// follower to catch up with the stream's last sequence.
func (l *Ledger) start(ctx context.Context) error {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("ledger/jetstream: read stream %s info: %w", l.opts.Stream, err)
	}
	tail, last := tailOf(info.State)
	if e, err := l.kv.Get(ctx, stateKey); err == nil {
		var rec record
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return fmt.Errorf("ledger/jetstream: decode %s/%s: %w", l.opts.StateBucket, stateKey, err)
		}
		l.kvRec, l.kvRev = rec, e.Revision()
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("ledger/jetstream: read %s/%s: %w", l.opts.StateBucket, stateKey, err)
	}
	if err := l.openIndex(ctx, info, tail, last); err != nil {
		return err
	}
	l.pub.SetTail(tail)
	l.idx.mu.RLock()
	from := l.idx.processed + 1
	l.idx.mu.RUnlock()
	it, err := l.followFrom(ctx, from)
	if err != nil {
		return err
	}
	l.iterMu.Lock()
	l.iter = it
	l.iterMu.Unlock()
	l.wg.Add(1)
	go l.follow(it)
	w, err := l.kv.Watch(l.ctx, stateKey, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("ledger/jetstream: watch %s/%s: %w", l.opts.StateBucket, stateKey, err)
	}
	l.wg.Add(1)
	go l.watch(w)
	if err := l.idx.waitProcessed(ctx, l.ctx, last); err != nil {
		return fmt.Errorf("ledger/jetstream: catch up with stream %s to sequence %d: %w", l.opts.Stream, last, err)
	}
	l.publishView()
	return nil
}

// openIndex opens the channel index: in memory from the tail without Options.IndexDir;
// otherwise the store in IndexDir, resumed from its checkpoint when it matches the stream,
// or cleared to be rebuilt from the tail, with the reason logged.
func (l *Ledger) openIndex(ctx context.Context, info *jetstream.StreamInfo, tail, last event.Position) error {
	if l.opts.IndexDir == "" {
		l.idx.reset(tail)
		return nil
	}
	st, err := openStore(l.opts.IndexDir, l.log)
	if err != nil {
		return err
	}
	id := storeMeta{Format: storeFormat, Indexer: l.opts.IndexerVersion, Stream: l.opts.Stream, Created: info.Created.UnixNano()}
	l.idx.store, l.idx.storeID, l.idx.log = st, id, l.log
	m, ok, err := st.meta()
	reason := ""
	switch {
	case err != nil:
		reason = fmt.Sprintf("its checkpoint is unreadable (%v)", err)
	case !ok:
		reason = "the directory holds no index (new, or deleted)"
	case m.Format != id.Format:
		reason = fmt.Sprintf("it has format %d, this walflow writes format %d", m.Format, id.Format)
	case m.Stream != id.Stream:
		reason = fmt.Sprintf("it was built from stream %s", m.Stream)
	case m.Created != id.Created:
		reason = fmt.Sprintf("the stream was deleted and created again (the index's stream was created at %s, this one at %s)",
			time.Unix(0, m.Created).UTC().Format(time.RFC3339Nano), info.Created.UTC().Format(time.RFC3339Nano))
	case m.Indexer != id.Indexer:
		reason = fmt.Sprintf("the indexer changed (the index was built with version %q, this ledger's is %q)", m.Indexer, id.Indexer)
	case event.Position(m.Checkpoint) > last:
		reason = fmt.Sprintf("it reaches sequence %d but the stream ends at %d: the stream lost messages since", m.Checkpoint, last)
	case event.Position(m.Checkpoint) < tail:
		reason = fmt.Sprintf("it ends at sequence %d but the stream's messages through %d were removed (retention) meanwhile", m.Checkpoint, tail)
	case m.Head > m.Checkpoint:
		reason = fmt.Sprintf("its checkpoint is inconsistent (head %d after checkpoint %d)", m.Head, m.Checkpoint)
	case event.Position(m.Checkpoint) > tail:
		// The message at the checkpoint is still in the stream: it must be the one indexed.
		msg, err := l.stream.GetMsg(ctx, m.Checkpoint)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			reason = fmt.Sprintf("the stream has no message at its checkpoint %d", m.Checkpoint)
		case err != nil:
			return fmt.Errorf("ledger/jetstream: read the message at sequence %d of stream %s to check the channel index: %w", m.Checkpoint, l.opts.Stream, err)
		case storedID(msg.Header) != m.LastID:
			reason = fmt.Sprintf("the message at its checkpoint %d has id %q, the index's had %q: the stream was rewritten", m.Checkpoint, storedID(msg.Header), m.LastID)
		}
	}
	if reason == "" {
		l.idx.resume(m, tail)
		l.log.Info("ledger/jetstream: reusing the channel index; catching up from its checkpoint", "dir", st.dir, "checkpoint", m.Checkpoint, "last", last)
		return nil
	}
	lvl := slog.LevelWarn
	if !ok && err == nil {
		lvl = slog.LevelInfo
	}
	l.log.Log(ctx, lvl, "ledger/jetstream: rebuilding the channel index from the stream", "dir", st.dir, "reason", reason, "tail", tail, "last", last)
	if err := st.clear(ctx); err != nil {
		return err
	}
	l.idx.reset(tail)
	return nil
}

// tailOf returns a stream's tail (the last removed sequence) and last sequence.
func tailOf(s jetstream.StreamState) (tail, last event.Position) {
	if s.Msgs == 0 {
		return event.Position(s.LastSeq), event.Position(s.LastSeq)
	}
	return event.Position(s.FirstSeq - 1), event.Position(s.LastSeq)
}

// followFrom starts an ordered consumer of the stream from sequence from.
func (l *Ledger) followFrom(ctx context.Context, from event.Position) (jetstream.MessagesContext, error) {
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{l.opts.Subject},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    uint64(from),
	})
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: create the ordered consumer that follows stream %s: %w", l.opts.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: follow stream %s: %w", l.opts.Stream, err)
	}
	return it, nil
}

// followCheck is how long the follower waits for a message before it compares what it
// applied with the stream's last sequence. An ordered consumer that a NATS server restart
// left stalled (heartbeats, but no messages although the stream has more) is replaced
// after two such checks in a row.
const followCheck = 2 * time.Second

// stalled reports whether the stream holds messages after the last one the follower
// applied.
func (l *Ledger) stalled() bool {
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	info, err := l.stream.Info(ctx)
	if err != nil {
		return false // cannot tell; the next check asks again
	}
	l.idx.mu.RLock()
	processed := l.idx.processed
	l.idx.mu.RUnlock()
	return event.Position(info.State.LastSeq) > processed
}

// refollow replaces the follower's iterator it with one from the sequence after the last
// applied; it returns it unchanged when that fails.
func (l *Ledger) refollow(it jetstream.MessagesContext) jetstream.MessagesContext {
	l.idx.mu.RLock()
	from := l.idx.processed + 1
	l.idx.mu.RUnlock()
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	nit, err := l.followFrom(ctx, from)
	if err != nil {
		l.log.Warn("ledger/jetstream: the stream's follower is stalled and could not be restarted; retrying", "from", from, "err", err)
		return it
	}
	l.log.Warn("ledger/jetstream: the stream's follower was stalled; restarted it", "from", from)
	l.iterMu.Lock()
	l.iter = nit
	l.iterMu.Unlock()
	it.Stop()
	if l.ctx.Err() != nil {
		nit.Stop() // Close may have stopped the old one only
	}
	return nit
}

// follow applies every message of the stream to the index, until Close stops it.
func (l *Ledger) follow(it jetstream.MessagesContext) {
	defer l.wg.Done()
	stalls := 0
	for {
		msg, err := it.Next(jetstream.NextMaxWait(followCheck))
		if errors.Is(err, nats.ErrTimeout) && l.ctx.Err() == nil {
			l.idx.flush(1, false) // the stream is idle: store what was applied
			if !l.stalled() {
				stalls = 0
				continue
			}
			if stalls++; stalls >= 2 {
				stalls = 0
				it = l.refollow(it)
			}
			continue
		}
		stalls = 0
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			l.log.Warn("ledger/jetstream: following the stream failed; retrying", "err", err)
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			l.log.Warn("ledger/jetstream: a stream message has no metadata; skipped", "err", err)
			continue
		}
		if l.idx.apply(l.log, event.Position(md.Sequence.Stream), msg.Headers(), msg.Data()) {
			l.publishView()
		}
		l.idx.flush(flushEvents, false)
	}
}

// watch follows the state bucket, so that a read-only ledger's State has the leader's
// acknowledged LSN and origin.
func (l *Ledger) watch(w jetstream.KeyWatcher) {
	defer l.wg.Done()
	defer w.Stop()
	poll := time.NewTicker(2 * time.Second)
	defer poll.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-poll.C:
			// Truncate on another node moves the tail; keep the index small.
			ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
			_, _ = l.refreshTail(ctx)
			cancel()
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var rec record
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				l.log.Warn("ledger/jetstream: undecodable state record; ignored", "bucket", l.opts.StateBucket, "err", err)
				continue
			}
			l.mu.Lock()
			if e.Revision() > l.kvRev {
				l.kvRec, l.kvRev = rec, e.Revision()
			}
			l.mu.Unlock()
			l.publishView()
		}
	}
}

// publishView publishes a read-only ledger's state: the head and LSNs of the last
// transaction the follower saw end, and the bookkeeping of the state bucket.
func (l *Ledger) publishView() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leading || l.pub.Closed() {
		return
	}
	head, commit, end := l.idx.headState()
	st := ledger.State{Head: head, LastCommitLSN: commit, LastEndLSN: end, AckedLSN: event.LSN(l.kvRec.AckedLSN), Origin: l.kvRec.Origin}
	if event.Position(l.kvRec.Head) <= head {
		// Empty transactions after the last event are only in the bucket.
		if event.LSN(l.kvRec.LastCommitLSN) > commit {
			st.LastCommitLSN, st.LastEndLSN = event.LSN(l.kvRec.LastCommitLSN), event.LSN(l.kvRec.LastEndLSN)
		}
	} else {
		// The bucket is ahead of this node's copy of the stream (its watch can outrun the
		// stream's consumer): its acknowledged LSN covers transactions this node has not
		// read, so it must not say they are in (process status would call them processed).
		// What this node published before stays true (its head only grows): the LSNs
		// never go back.
		prev := l.pub.State()
		st.AckedLSN = max(min(st.AckedLSN, end), prev.AckedLSN)
		st.LastCommitLSN, st.LastEndLSN = max(commit, prev.LastCommitLSN), max(end, prev.LastEndLSN)
	}
	l.pub.Publish(st)
}

// refreshTail reads the stream's first sequence and publishes the tail it implies
// (clamped to the head), pruning the index. It returns the published tail.
func (l *Ledger) refreshTail(ctx context.Context) (event.Position, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return l.pub.Tail(), fmt.Errorf("ledger/jetstream: read stream %s info: %w", l.opts.Stream, err)
	}
	tail, _ := tailOf(info.State)
	l.setTail(min(tail, l.pub.Head()))
	return l.pub.Tail(), nil
}

func (l *Ledger) setTail(tail event.Position) {
	if tail > l.pub.Tail() {
		l.pub.SetTail(tail)
		l.idx.prune(tail)
	}
}

// opCtx returns ctx, also cancelled by Close.
func (l *Ledger) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// closedErr returns ErrClosed in place of err once the ledger is closed (Close cancels
// the calls in progress).
func (l *Ledger) closedErr(err error) error {
	if err != nil && l.pub.Closed() {
		return ledger.ErrClosed
	}
	return err
}

// State returns the durable bookkeeping: on the leader as of its last Sync, on other
// nodes as of the last transaction end this node's follower saw.
func (l *Ledger) State() ledger.State { return l.pub.State() }

// Wait blocks until the head is past after, ctx ends or the ledger is closed. It wakes on
// transactions any node's writer appended.
func (l *Ledger) Wait(ctx context.Context, after event.Position) error {
	return l.pub.Wait(ctx, after)
}

// Truncate purges every message at or before through (clamped to the head) from the
// stream, keeping later sequences, and drops the index entries. Only the leader truncates
// (others get [ErrReadOnly], a failed writer its error), so that one node applies
// retention. The writer goes on meanwhile: a purge keeps the stream's last sequence, which
// its batches expect. Other nodes see the new tail within seconds, or at once when a read
// needs a purged message.
func (l *Ledger) Truncate(ctx context.Context, through event.Position) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if l.opts.ReadOnly {
		return fmt.Errorf("%w: it was opened with Options.ReadOnly, and Truncate purges the stream", ErrReadOnly)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	leading := l.leading
	l.mu.Unlock()
	if leading && min(through, l.pub.Head()) <= l.pub.Tail() {
		return nil // nothing to remove: no need to hold up the writer
	}
	l.truncMu.Lock()
	defer l.truncMu.Unlock()
	// The writer may go on while the stream is purged: its batches expect the stream's
	// last sequence, which a purge keeps.
	l.wmu.Lock()
	w := l.w
	var failed error
	if w != nil {
		failed = w.failed
	}
	l.wmu.Unlock()
	if w == nil {
		return ErrReadOnly
	}
	if failed != nil {
		return failed
	}
	through = min(through, l.pub.Head())
	if through <= l.pub.Tail() {
		return nil
	}
	octx, cancel := l.opCtx(ctx)
	defer cancel()
	if err := l.stream.Purge(octx, jetstream.WithPurgeSequence(uint64(through)+1)); err != nil {
		return l.closedErr(fmt.Errorf("ledger/jetstream: purge stream %s through sequence %d: %w", l.opts.Stream, through, err))
	}
	l.setTail(through)
	return nil
}

// Close stops the follower and the writer. Later calls return [ledger.ErrClosed], and so
// do reads and waits in progress. The NATS connection stays open.
func (l *Ledger) Close() error {
	if !l.pub.Close() {
		return ledger.ErrClosed
	}
	l.cancel()
	l.iterMu.Lock()
	if l.iter != nil {
		l.iter.Stop()
	}
	l.iterMu.Unlock()
	l.wg.Wait()
	l.wmu.Lock()
	if l.w != nil {
		l.w.spool.close()
	}
	l.wmu.Unlock()
	if l.idx.store != nil {
		l.idx.flush(1, true)
		return l.idx.store.close()
	}
	return nil
}
