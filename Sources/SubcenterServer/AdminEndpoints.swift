// The admin HTTP endpoints: GET /metrics (Prometheus text), /healthz (the process
// answers), /readyz (ready to serve gRPC, and able to make writes durable: 503 once the
// write-ahead log has failed for good, as writes are then refused until a restart), and
// POST /snapshot (write a snapshot now, answered with its seq once it is durable).

import GRPCTransport
import SubcenterStore

public enum AdminEndpoints {
  /// The handler for `AdminHTTPServer`, reading live figures from `server` and, when
  /// given, from `storage` (its write-ahead log and snapshots) and `erasure` (compactions).
  public static func handler(
    server: GRPCServer, storage: DurableStore? = nil, erasure: Compaction? = nil,
    isReady: @escaping @Sendable () -> Bool
  ) -> @Sendable (AdminRequest) -> AdminResponse {
    { request in
      let path = request.path
      if path == "/snapshot" {
        guard request.method == "POST" else {
          return AdminResponse(status: 405, body: "POST /snapshot writes one\n", allow: "POST")
        }
        guard let storage else { return AdminResponse(status: 404, body: "no storage\n") }
        do {
          let seq = try storage.snapshot()
          return AdminResponse(status: 200, body: "snapshot at seq \(seq)\n")
        } catch {
          return AdminResponse(status: 503, body: "snapshot failed: \(error)\n")
        }
      }
      guard request.method == "GET" || !["/healthz", "/readyz", "/metrics"].contains(path) else {
        return AdminResponse(status: 405, body: "\(path) is read with GET\n", allow: "GET, HEAD")
      }
      switch path {
      case "/healthz":
        return AdminResponse(status: 200, body: "ok\n")
      case "/readyz":
        if let failure = storage?.wal.status.failure {
          return AdminResponse(
            status: 503, body: "not ready: the write-ahead log failed (\(failure)); restart\n")
        }
        return isReady()
          ? AdminResponse(status: 200, body: "ready\n")
          : AdminResponse(status: 503, body: "not ready\n")
      case "/metrics":
        let s = server.stats
        let byCode = RPCStatus.Code.allCases.map { code in
          "subcenter_grpc_calls_total{code=\"\(code.name)\"} "
            + "\(code == .ok ? s.callsOK : s.callsNotOK[code.rawValue])\n"
        }.joined()
        let text = """
          # HELP subcenter_grpc_calls_total gRPC calls ended, by status (CANCELLED: the client \
          reset the call or went away before its answer).
          # TYPE subcenter_grpc_calls_total counter
          \(byCode)# HELP subcenter_open_connections TLS connections open now.
          # TYPE subcenter_open_connections gauge
          subcenter_open_connections \(s.openConnections)
          # HELP subcenter_connections_refused_total TLS connections closed on arrival because \
          --max-connections were open.
          # TYPE subcenter_connections_refused_total counter
          subcenter_connections_refused_total \(s.refusedConnections)

          """
          + (storage.map {
            storageMetrics($0.wal.status, $0.snapshotStatus)
              + watchMetrics($0.changeFeed.watchStatus)
          } ?? "")
          + (erasure.map { erasureMetrics($0.erasureStatus) } ?? "")
        return AdminResponse(status: 200, contentType: "text/plain; version=0.0.4", body: text)
      default:
        return AdminResponse(
          status: 404, body: "not found: try /metrics, /healthz, /readyz, POST /snapshot\n")
      }
    }
  }

  static func watchMetrics(_ w: (open: Int, refused: Int)) -> String {
    """
    # HELP subcenter_watch_streams WatchChanges streams open now.
    # TYPE subcenter_watch_streams gauge
    subcenter_watch_streams \(w.open)
    # HELP subcenter_watch_streams_refused_total WatchChanges calls refused RESOURCE_EXHAUSTED because --max-watchers streams were open.
    # TYPE subcenter_watch_streams_refused_total counter
    subcenter_watch_streams_refused_total \(w.refused)

    """
  }

  static func erasureMetrics(
    _ e: (failed: Int, oldestPendingSeconds: Double, lastSeconds: Double)
  ) -> String {
    """
    # HELP subcenter_erasure_compactions_failed_total Erasure compactions that failed (each is retried a second later; the server log says why).
    # TYPE subcenter_erasure_compactions_failed_total counter
    subcenter_erasure_compactions_failed_total \(e.failed)
    # HELP subcenter_erasure_oldest_pending_seconds How long the oldest erasure not yet on disk has waited (0: none). Alert when it nears --erasure-deadline.
    # TYPE subcenter_erasure_oldest_pending_seconds gauge
    subcenter_erasure_oldest_pending_seconds \(e.oldestPendingSeconds)
    # HELP subcenter_erasure_compaction_last_seconds How long the last erasure compaction (a whole snapshot) took; the next starts no sooner than three times that after it (at most a quarter of --erasure-deadline after the forget).
    # TYPE subcenter_erasure_compaction_last_seconds gauge
    subcenter_erasure_compaction_last_seconds \(e.lastSeconds)

    """
  }

  /// The write-ahead log's figures (what it wrote, how it synced, whether it failed) and
  /// the snapshots'.
  static func storageMetrics(_ s: WriteAheadLog.Status, _ snap: DurableStore.SnapshotStatus)
    -> String
  {
    let c = s.counters
    return """
      # HELP subcenter_wal_records_total Log records written (with --fsync always, synced) and acknowledged.
      # TYPE subcenter_wal_records_total counter
      subcenter_wal_records_total \(c.records)
      # HELP subcenter_wal_batches_total Writes of queued records (group commits).
      # TYPE subcenter_wal_batches_total counter
      subcenter_wal_batches_total \(c.batches)
      # HELP subcenter_wal_bytes_total Bytes of framed records written.
      # TYPE subcenter_wal_bytes_total counter
      subcenter_wal_bytes_total \(c.bytes)
      # HELP subcenter_wal_syncs_total fdatasync calls on the active log segment.
      # TYPE subcenter_wal_syncs_total counter
      subcenter_wal_syncs_total \(c.syncs)
      # HELP subcenter_wal_sync_seconds_total Time spent in those fdatasync calls.
      # TYPE subcenter_wal_sync_seconds_total counter
      subcenter_wal_sync_seconds_total \(Double(c.syncNanos) / 1e9)
      # HELP subcenter_wal_failed_batches_total Batches answered UNAVAILABLE: a full disk or an I/O error.
      # TYPE subcenter_wal_failed_batches_total counter
      subcenter_wal_failed_batches_total \(c.failedBatches)
      # HELP subcenter_wal_failed 1 once the log has failed for good: no write is acknowledged until a restart.
      # TYPE subcenter_wal_failed gauge
      subcenter_wal_failed \(s.failure == nil ? 0 : 1)
      # HELP subcenter_wal_durable_seq The newest seq on disk for sure.
      # TYPE subcenter_wal_durable_seq gauge
      subcenter_wal_durable_seq \(s.durableThrough)
      # HELP subcenter_snapshot_seq The seq the newest snapshot on disk covers (0: none yet).
      # TYPE subcenter_snapshot_seq gauge
      subcenter_snapshot_seq \(snap.seq)
      # HELP subcenter_snapshot_last_written_timestamp_seconds When this process last wrote a snapshot (Unix time; 0: not yet).
      # TYPE subcenter_snapshot_last_written_timestamp_seconds gauge
      subcenter_snapshot_last_written_timestamp_seconds \(Double(snap.writtenAt) / 1000)
      # HELP subcenter_snapshots_written_total Snapshots written.
      # TYPE subcenter_snapshots_written_total counter
      subcenter_snapshots_written_total \(snap.written)
      # HELP subcenter_snapshots_failed_total Snapshot attempts that failed (the state stays in the log; the server log says why).
      # TYPE subcenter_snapshots_failed_total counter
      subcenter_snapshots_failed_total \(snap.failed)

      """
  }
}
