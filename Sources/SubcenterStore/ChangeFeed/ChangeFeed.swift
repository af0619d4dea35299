// The change feed (SPEC §3 `WatchChanges`): every watcher reads the retained log segments
// from its cursor on, then follows the log as records become durable. Nothing is kept in
// memory for the feed but each watcher's small queue: the log on disk is the feed, so it
// survives restarts and erasure (which rewrites retained segments) applies to it.
//
// One feed thread serves every watcher of a store, never an event loop: it wakes when the
// log reports a record durable (`recordsDurable`), when a watcher's stream drained, when a
// watcher comes or goes, and every 20 ms while anyone watches (so `--fsync interval`,
// whose syncs report nothing, is followed too). Only records up to the log's
// `readableThrough` are read, so only durable records are ever sent (with `--fsync none`,
// which syncs only when a segment is left, records once written: that policy accepts that
// an OS crash may lose them).
//
// Per watcher:
// - Segments, complete or being written, are read a chunk (`readChunk`, 1 MiB) at a time
//   from the byte offset reached, each frame checked for the expected seq; a watcher
//   never holds more of the log than one chunk (or one record larger than it). Where a
//   watcher starts, and after a mismatch (the segment was rewritten by erasure meanwhile),
//   the offset of its next record is found by walking the segment's frames, a chunk at a
//   time. A complete segment that does not hold the records its name and the next
//   segment's promise is damaged; the segment being written may simply not hold them yet,
//   and is read only as far as the log says its records are durable
//   (`Status.activeReadableBytes`), never into its preallocated zeros.
// - At most `queueLimit` decoded events wait in its queue; they go to the stream while the
//   stream buffers less than `highWater` bytes. A watcher whose stream stays above
//   `highWater` for `stallLimit` (30 s) with events waiting, or buffers more than
//   `maxBuffered` (8 MiB), is cut off with RESOURCE_EXHAUSTED at once: the server's sink
//   drops the events its stream has not sent yet, so the watcher resumes after the last
//   event it received (the status names the last seq handed to the stream, an upper
//   bound).
// - Erasure (DurableStore.compact) tells the feed the seqs it erased: queued events of
//   those seqs are dropped and cached segment reads discarded.

import CLinux
import Glibc
import SubcenterCore
import Synchronization

/// Where a watcher's events go (the server's stream).
public protocol ChangeSink: AnyObject, Sendable {
  /// Bytes sent and not yet handed to the network.
  var bufferedBytes: Int { get }
  var isCancelled: Bool { get }
  /// Sends one event; `whenDrained` runs once the stream's buffer is empty again.
  func send(_ event: ChangeEvent, whenDrained: @escaping @Sendable () -> Void)
  /// Ends the stream: after the events sent, or for `.resourceExhausted` (the watcher
  /// reads too slowly, or `maxWatchers` were open) possibly without those its stream has
  /// not delivered yet.
  func finish(_ end: ChangeFeedEnd)
}

/// Why a watch ends.
public enum ChangeFeedEnd: Sendable, Equatable {
  case outOfRange(String)
  case resourceExhausted(String)
  case unavailable(String)
  case failed(String)
}

/// Where a watch starts.
public enum WatchStart: Sendable, Equatable {
  /// After the newest durable record.
  case now
  /// After this seq.
  case after(UInt64)
  /// At the oldest retained record.
  case oldest
}

public final class ChangeFeed: Sendable {
  public struct Options: Sendable {
    public var highWater = 256 << 10
    public var maxBuffered = 8 << 20
    public var stallLimitNanos: UInt64 = 30_000_000_000
    public var queueLimit = 4096
    public var pollNanos: UInt64 = 20_000_000
    /// At most this many bytes of a segment are read at a time (segments are 64 MiB, the
    /// active one may end in megabytes of preallocated zeros), more only for a record
    /// larger than that.
    public var readChunk = 1 << 20
    /// Watches open at once (`--max-watchers`): each may hold up to `maxBuffered` plus a
    /// `readChunk` while its client reads slowly; a watch beyond it is refused
    /// `RESOURCE_EXHAUSTED`.
    public var maxWatchers = 1000
    public init() {}
  }

  let directory: String
  let fileSystem: any FileSystem
  let wal: WriteAheadLog
  let options: Options
  /// A workspace's newest event seq (`SubscriptionStore.lastEventSeq(workspace:)`).
  let lastEventSeq: @Sendable (String) -> UInt64
  let wake = WakeEvent()

  struct State {
    var pending: [Watcher] = []
    var cancelled: Set<Int> = []
    var erased: [Set<UInt64>] = []
    var nextID = 1
    var closed = false
    var running = false
    var thread: pthread_t?
  }
  let state = Mutex(State())
  /// How many watches are open, counting from when `watch` takes a place for one to when
  /// the feed thread ends it (the log's completions only wake the thread when some are).
  let watching = Atomic<Int>(0)
  /// Watches refused because `options.maxWatchers` were open.
  let refusedWatches = Atomic<Int>(0)

  /// What left the log while this process ran, for `OUT_OF_RANGE`: per workspace, the
  /// newest event seq in the segments the retention deleted. Of what left before
  /// `knownFrom` (before the process started, or unread: damaged segments an erasure
  /// deleted) nothing is known per workspace.
  struct Expiry {
    var knownFrom: UInt64
    var newestEvent: [String: UInt64] = [:]
  }
  let expiry: Mutex<Expiry>

  /// `oldestRetained`: the first seq of the log when the store was opened.
  init(
    directory: String, fileSystem: any FileSystem, wal: WriteAheadLog, options: Options,
    oldestRetained: UInt64, lastEventSeq: @escaping @Sendable (String) -> UInt64
  ) {
    self.directory = directory
    self.fileSystem = fileSystem
    self.wal = wal
    self.options = options
    self.expiry = Mutex(Expiry(knownFrom: oldestRetained))
    self.lastEventSeq = lastEventSeq
  }

  /// Segments holding these newest event seqs per workspace are about to be deleted.
  func expiring(newestEvents: [String: UInt64]) {
    expiry.withLock { e in
      e.newestEvent.merge(newestEvents) { max($0, $1) }
    }
  }

  /// Segments before `seq` are about to be deleted unread: what they held is not known.
  func expiringUnread(before seq: UInt64) {
    expiry.withLock { $0.knownFrom = max($0.knownFrom, seq) }
  }

  /// Whether a consumer of `workspace` resuming after `seq`, older than the oldest
  /// retained seq, missed an event of its workspace that expired (SPEC §3: `OUT_OF_RANGE`
  /// then, and only then). Exact for what expired while this process ran; for what
  /// expired before, only "the workspace has had an event since" is known, so such a
  /// cursor is refused then (it may resync once more than needed, never miss an event).
  func missedExpiredEvents(workspace: String, after seq: UInt64) -> Bool {
    let e = expiry.withLock { $0 }
    if seq &+ 1 < e.knownFrom { return lastEventSeq(workspace) > seq }
    return (e.newestEvent[workspace] ?? 0) > seq
  }

  /// Starts a watch of `workspace`'s events. Returns an id for `cancel`. With
  /// `options.maxWatchers` watches open, `sink` is finished `RESOURCE_EXHAUSTED` at once.
  @discardableResult
  public func watch(workspace: String, from start: WatchStart, sink: any ChangeSink) -> Int {
    guard takeWatchPlace() else {
      refusedWatches.add(1, ordering: .relaxed)
      sink.finish(
        .resourceExhausted(
          "\(options.maxWatchers) WatchChanges streams are open on this server, as many as "
            + "--max-watchers allows; retry later"))
      return 0
    }
    // "From now on" means from the call, not from when the feed thread gets to it.
    let start = start == .now ? .after(wal.status.readableThrough) : start
    let (id, startThread, closed) = state.withLock { s -> (Int, Bool, Bool) in
      let id = s.nextID
      s.nextID += 1
      if s.closed { return (id, false, true) }
      s.pending.append(Watcher(id: id, workspace: workspace, start: start, sink: sink))
      let start = !s.running
      s.running = true
      return (id, start, false)
    }
    if closed {
      watching.subtract(1, ordering: .relaxed)
      sink.finish(.unavailable("the server is shutting down"))
      return id
    }
    if startThread { startFeedThread() }
    wake.signal()
    return id
  }

  /// Takes one of the `options.maxWatchers` places of open watches; false when all are
  /// taken. The feed thread gives a place back when its watch ends.
  private func takeWatchPlace() -> Bool {
    var open = watching.load(ordering: .relaxed)
    while open < options.maxWatchers {
      let (taken, seen) = watching.compareExchange(
        expected: open, desired: open + 1, ordering: .relaxed)
      if taken { return true }
      open = seen
    }
    return false
  }

  /// Watches open now, and watches refused since the start because `maxWatchers` were.
  public var watchStatus: (open: Int, refused: Int) {
    (watching.load(ordering: .relaxed), refusedWatches.load(ordering: .relaxed))
  }

  /// Has the feed thread look at every watch again soon (`ChangeSink.isCancelled` may
  /// have changed: the tokens were replaced).
  public func recheckWatchers() { wake.signal() }

  /// Ends a watch (the client went away).
  public func cancel(_ id: Int) {
    state.withLock { _ = $0.cancelled.insert(id) }
    wake.signal()
  }

  /// New durable records may be there.
  func recordsDurable() {
    if watching.load(ordering: .relaxed) > 0 { wake.signal() }
  }

  /// Erasure replaced these records: drop them from every watcher's queue. Only the feed
  /// thread takes them, and it runs from the first watch on: before, no watcher has a
  /// queue, and nothing would ever take them (every erasure of a server nobody watched
  /// stayed in memory).
  func erased(_ seqs: Set<UInt64>) {
    guard !seqs.isEmpty else { return }
    let taken = state.withLock { s -> Bool in
      guard s.running, !s.closed else { return false }
      s.erased.append(seqs)
      return true
    }
    if taken { wake.signal() }
  }

  /// Ends every watch with UNAVAILABLE and stops the feed thread.
  public func close() {
    let tid = state.withLock { s -> pthread_t? in
      s.closed = true
      defer { s.thread = nil }
      return s.thread
    }
    wake.signal()
    if let tid { pthread_join(tid, nil) }
  }

  /// The oldest retained seq and the newest durable one.
  func bounds() throws(StorageError) -> (oldest: UInt64, newest: UInt64) {
    let st = wal.status
    let segments = try WALSegment.list(directory: directory, fileSystem: fileSystem)
    let oldest =
      segments.first.map { min($0.firstSeq, st.readableThrough + 1) } ?? st.readableThrough + 1
    return (oldest, st.readableThrough)
  }

  private func startFeedThread() {
    let box = Unmanaged.passRetained(self).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, changeFeedThreadMain, box)
    if rc != 0 {
      Unmanaged<ChangeFeed>.fromOpaque(box).release()
      let ws = state.withLock { s -> [Watcher] in
        s.running = false
        defer { s.pending = [] }
        return s.pending
      }
      watching.subtract(ws.count, ordering: .relaxed)
      for w in ws { w.sink.finish(.unavailable("cannot start the change feed thread")) }
      return
    }
    state.withLock { $0.thread = tid }
  }

  // MARK: The feed thread

  func run() {
    var watchers: [Watcher] = []
    while true {
      let (new, cancelled, erased, closed) = state.withLock { s in
        defer {
          s.pending = []
          s.cancelled = []
          s.erased = []
        }
        return (s.pending, s.cancelled, s.erased, s.closed)
      }
      watchers += new
      if closed {
        for w in watchers { w.sink.finish(.unavailable("the server is shutting down")) }
        watching.subtract(watchers.count, ordering: .relaxed)
        let late = state.withLock { s -> [Watcher] in
          defer { s.pending = [] }
          return s.pending
        }
        for w in late { w.sink.finish(.unavailable("the server is shutting down")) }
        watching.subtract(late.count, ordering: .relaxed)
        return
      }
      for seqs in erased { for w in watchers { w.dropErased(seqs) } }
      let durable = Watcher.DurableEnd(wal.status)
      let now = monotonicNanos()
      var kept: [Watcher] = []
      for w in watchers {
        if cancelled.contains(w.id) || w.sink.isCancelled {
          continue
        }
        if let end = w.step(feed: self, durable: durable, now: now) {
          w.sink.finish(end)
          continue
        }
        kept.append(w)
      }
      watching.subtract(watchers.count - kept.count, ordering: .relaxed)
      watchers = kept
      wake.wait(until: watchers.isEmpty ? nil : monotonicNanos() + options.pollNanos)
    }
  }
}

private func changeFeedThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  let feed = Unmanaged<ChangeFeed>.fromOpaque(arg!).takeRetainedValue()
  CLinux_set_thread_name("change-feed")
  feed.run()
  return nil
}

/// One watch. Touched only by the feed thread (after `watch` handed it over).
final class Watcher: @unchecked Sendable {
  let id: Int
  let workspace: String
  let sink: any ChangeSink
  private var start: WatchStart?
  /// Every record up to this seq has been read (its events queued or sent).
  private(set) var cursor: UInt64 = 0
  /// The last seq sent.
  private(set) var lastSent: UInt64 = 0
  private var queue: [ChangeEvent] = []
  private var head = 0
  private var blockedSince: UInt64?
  /// The seqs a start skipped (`SkippedSeqs`) that the cursor fell among, when it did.
  private var cursorSkipped: ClosedRange<UInt64>?
  /// Where reading got to: in `segment`, record `seq` (then `cursor + 1`) starts at byte
  /// `offset`.
  private var tail: (segment: WALSegmentFile, seq: UInt64, offset: Int)?

  init(id: Int, workspace: String, start: WatchStart, sink: any ChangeSink) {
    self.id = id
    self.workspace = workspace
    self.start = start
    self.sink = sink
  }

  func dropErased(_ seqs: Set<UInt64>) {
    queue = queue[head...].filter { !seqs.contains($0.seq) }
    head = 0
    tail = nil
  }

  /// Reads and sends what it can; returns why the watch ends, if it does.
  func step(feed: ChangeFeed, durable: DurableEnd, now: UInt64) -> ChangeFeedEnd? {
    do {
      if let start {
        self.start = nil
        let (oldest, newest) = try feed.bounds()
        let retained = oldest <= newest ? oldest : newest
        switch start {
        case .now: cursor = newest
        case .oldest: cursor = oldest - 1
        case .after(let seq):
          if seq > newest {
            return .outOfRange(
              "after_seq \(seq) is beyond the newest seq \(newest); "
                + "the oldest retained seq is \(retained)")
          }
          // Only a missed event is a reason: a workspace quiet since the cursor (its newest
          // event at or before it) missed nothing while other workspaces' records expired.
          if seq + 1 < oldest, feed.missedExpiredEvents(workspace: workspace, after: seq) {
            return .outOfRange(
              "the events after seq \(seq) have expired; the oldest retained seq is \(retained)")
          }
          cursor = max(seq, oldest - 1)
        }
        lastSent = cursor
      }
      while true {
        // Send while the stream takes it.
        while head < queue.count && sink.bufferedBytes < feed.options.highWater {
          let e = queue[head]
          head += 1
          sink.send(e) { [weak feed] in feed?.wake.signal() }
          lastSent = e.seq
        }
        if head == queue.count {
          queue.removeAll(keepingCapacity: true)
          head = 0
        }
        if head < queue.count {
          let buffered = sink.bufferedBytes
          let since = blockedSince ?? now
          blockedSince = since
          if buffered > feed.options.maxBuffered || now - since > feed.options.stallLimitNanos {
            return .resourceExhausted(
              "the watcher reads too slowly (\(buffered) bytes unread): cut off, and the "
                + "events its stream had not sent are dropped; resume with after_seq set to "
                + "the seq of the last event received (\(lastSent) at most)")
          }
          return nil
        }
        blockedSince = nil
        if cursor >= durable.seq { return nil }
        let more = try read(feed: feed, durable: durable)
        if let skipped = cursorSkipped {
          let (oldest, newest) = try feed.bounds()
          return .outOfRange(
            "after_seq \(lastSent) was never a seq of this data: seqs \(skipped.lowerBound) to "
              + "\(skipped.upperBound) were skipped at a start, as the log ended before them (a "
              + "backup was restored, or changes were lost under --fsync interval or none); "
              + "start over (from_oldest, or a full read); the oldest retained seq is "
              + "\(min(oldest, newest))")
        }
        if !more { return nil }
      }
    } catch let e as StorageError where e.errno == ENOENT {
      _ = e
      return .outOfRange(
        "the events after seq \(cursor) have expired while being read; resume with after_seq \(lastSent)"
      )
    } catch is Expired {
      return .outOfRange(
        "the events after seq \(cursor) have expired while being read; resume with after_seq \(lastSent)"
      )
    } catch {
      return .failed("reading the log: \(error)")
    }
  }

  /// Queues the events of the record taking seqs `seq` ..< `end` that come after `cursor`
  /// (a resume may fall inside a record that takes several).
  private func queueEvents(_ seq: UInt64, _ end: UInt64, _ payload: ArraySlice<UInt8>)
    throws(StorageError)
  {
    let (_, command) = try LogRecordCodec.decode(payload)
    // A resume inside a start's skipped seqs names a seq this data never had.
    if command == nil, seq <= cursor, try LogRecordCodec.isSkippedSeqs(payload) {
      cursorSkipped = seq...(end - 1)
    }
    if let command, command.workspace == workspace {
      let events = ChangeEvents.events(seq: seq, command: command)
      if seq > cursor {
        queue += events
      } else {
        queue += events.filter { $0.seq > cursor }
      }
    }
    cursor = end - 1
  }

  private struct Expired: Error {}

  /// How far the log is durable: through seq `seq`, and in the segment being written (first
  /// seq `activeSegment`) through byte `activeBytes`, read together from the log's status.
  struct DurableEnd {
    var seq: UInt64
    var activeSegment: UInt64
    var activeBytes: Int

    init(_ s: WriteAheadLog.Status) {
      (seq, activeSegment, activeBytes) = (
        s.readableThrough, s.activeSegment, s.activeReadableBytes
      )
    }
  }

  /// Reads records after `cursor` (up to `durable`) into the queue; false when nothing
  /// more could be read now.
  ///
  /// An erasure may rename a rewritten segment (erased records are shorter) over one being
  /// read, so an offset kept from an earlier read (`tail`) can point anywhere in a complete
  /// segment: only an offset found in this read, through the one descriptor the records
  /// are then read through (one file, old or new), makes a missing record damage.
  private func read(feed: ChangeFeed, durable: DurableEnd) throws -> Bool {
    let want = cursor + 1
    // Go on where the last read stopped, without listing the directory; list it when that
    // segment holds nothing more (the next record is in a newer one) or none was read yet.
    if let t = tail, t.seq == want {
      let more = try withSegment(t.segment, feed: feed) { file in
        try readFrames(
          t.segment, file, at: t.offset, complete: false, feed: feed, durable: durable)
      }
      if more { return true }
    }
    let segments = try WALSegment.list(directory: feed.directory, fileSystem: feed.fileSystem)
    guard let index = segments.lastIndex(where: { $0.firstSeq <= want }) else {
      throw Expired()
    }
    let segment = segments[index]
    let complete = index + 1 < segments.count
    return try withSegment(segment, feed: feed) { file in
      let offset: Int
      if let t = tail, t.segment == segment, t.seq == want, !complete {
        offset = t.offset  // the segment being written: no rewrite moves its records
      } else {
        offset = try locate(
          want, in: segment, file, complete: complete, feed: feed, durable: durable)
      }
      return try readFrames(
        segment, file, at: offset, complete: complete, feed: feed, durable: durable)
    }
  }

  /// Runs `body` with `segment` open.
  private func withSegment<T>(
    _ segment: WALSegmentFile, feed: ChangeFeed, _ body: (FileHandle) throws -> T
  ) throws -> T {
    let file: FileHandle
    do { file = try feed.fileSystem.open(joinPath(feed.directory, segment.name)) } catch {
      throw StorageError(error, "reading log segment \(segment.name)")
    }
    defer { try? feed.fileSystem.close(file) }
    return try body(file)
  }

  /// Queues the events of the records of `segment` (open as `file`) from byte `offset`
  /// (the record after `cursor`) on, up to `durable`, as many as one chunk holds; returns
  /// whether it queued any. In a `complete` segment, no record there is damage.
  private func readFrames(
    _ segment: WALSegmentFile, _ file: FileHandle, at offset: Int, complete: Bool,
    feed: ChangeFeed, durable: DurableEnd
  ) throws -> Bool {
    let want = cursor + 1
    let bytes = try chunk(of: segment, file, at: offset, feed: feed, durable: durable)
    var room = max(0, feed.options.queueLimit - queue.count)
    var expected = want  // the first seq of the next record
    typealias Frame = (seq: UInt64, end: UInt64, payload: Range<Int>, next: Int)
    let (frames, mismatch) = bytes.withUnsafeBytes { b -> ([Frame], Bool) in
      var out: [Frame] = []
      var at = 0
      while at < b.count && room > 0 && expected <= durable.seq {
        guard case .record(let payload, let next) = RecordFrame.parse(b, at: at) else { break }
        guard let seqs = WALSegment.leadingSequences(UnsafeRawBufferPointer(rebasing: b[payload]))
        else { return (out, true) }
        // The first record read may begin before `want`, when `want` falls inside it.
        let holds =
          out.isEmpty
          ? seqs.first <= want && want - seqs.first < seqs.count : seqs.first == expected
        guard holds else { return (out, true) }
        expected = seqs.first + seqs.count
        out.append((seqs.first, expected, payload, next))
        room -= 1
        at = next
      }
      return (out, false)
    }
    var consumed = 0
    for f in frames {
      try queueEvents(f.seq, f.end, bytes[f.payload])
      consumed = f.next
    }
    if mismatch {
      // The segment changed since the offset was found: find it again next time (where
      // real damage is reported).
      tail = nil
      return !frames.isEmpty
    }
    if frames.isEmpty && complete {
      // The next segment starts after `want`, so this one must hold it.
      throw StorageError.damaged(
        segment.name, at: Int64(offset), "no valid record of seq \(want) where it should be")
    }
    tail = (segment, expected, offset + consumed)
    return !frames.isEmpty
  }

  /// The byte offset of the record holding `seq` in `segment` (open as `file`), found by
  /// walking its frames a chunk at a time; in the segment being written, where its records
  /// end if `seq` is not there yet. A complete segment whose frames end or break before
  /// `seq` is damaged.
  private func locate(
    _ seq: UInt64, in segment: WALSegmentFile, _ file: FileHandle, complete: Bool,
    feed: ChangeFeed, durable: DurableEnd
  ) throws -> Int {
    var offset = WALSegment.headerSize
    var at = segment.firstSeq  // the first seq of the record at `offset`
    var found = false
    while at < seq && !found {
      let bytes = try chunk(of: segment, file, at: offset, feed: feed, durable: durable)
      let (walked, broken) = bytes.withUnsafeBytes { b -> (Int, Bool) in
        var o = 0
        while at < seq, case .record(let payload, let next) = RecordFrame.parse(b, at: o) {
          guard
            let seqs = WALSegment.leadingSequences(UnsafeRawBufferPointer(rebasing: b[payload])),
            seqs.first == at
          else { return (o, true) }
          if seq - at < seqs.count {
            found = true  // this record takes `seq` too
            break
          }
          o = next
          at += seqs.count
        }
        return (o, false)
      }
      offset += walked
      if found { break }
      if broken || (walked == 0 && at < seq) {
        if !complete { return offset }
        throw StorageError.damaged(
          segment.name, at: Int64(offset), "seq \(seq) is missing from the log")
      }
    }
    return offset
  }

  /// The bytes of `segment` (open as `f`) from `offset`: `readChunk` of them at most, or
  /// the whole of a record larger than that; none past the end of the file, nor, in the
  /// segment being written, past its durable records (not the preallocated zeros after
  /// them).
  private func chunk(
    of segment: WALSegmentFile, _ f: FileHandle, at offset: Int, feed: ChangeFeed,
    durable: DurableEnd
  ) throws -> [UInt8] {
    do {
      var size = try feed.fileSystem.size(f)
      if segment.firstSeq == durable.activeSegment { size = min(size, Int64(durable.activeBytes)) }
      if size <= Int64(offset) { return [] }
      let available = Int(size) - offset
      let read = try feed.fileSystem.read(
        f, count: min(available, feed.options.readChunk), at: Int64(offset))
      if read.count >= RecordFrame.headerSize {
        let length = Int(read[0]) | Int(read[1]) << 8 | Int(read[2]) << 16 | Int(read[3]) << 24
        let whole = min(available, RecordFrame.headerSize + length)
        if whole > read.count && length <= RecordFrame.maxPayloadSize {
          return try feed.fileSystem.read(f, count: whole, at: Int64(offset))
        }
      }
      return read
    } catch {
      throw StorageError(error, "reading log segment \(segment.name)")
    }
  }
}
