// The one error type of the write-ahead log, snapshots and recovery. Messages are for an
// operator: they name the file, the byte offset when there is one, and what to do next.

import Glibc
import SubcenterCore

/// A storage failure.
public struct StorageError: Error, Sendable, Equatable, CustomStringConvertible {
  public enum Kind: Sendable, Equatable {
    /// A file-system call failed.
    case io
    /// The disk (or quota) is full; writes may succeed again once space is freed.
    case noSpace
    /// A file does not hold what was written: bad checksum, cut short, wrong magic…
    case damaged
    /// The log refuses writes: it failed for good, is rolling back a failed batch, or
    /// is closed.
    case unavailable
    /// A value cannot be stored (too large).
    case invalid
    /// The data was written under another server secret (`secret.key`).
    case wrongSecret
  }

  public let kind: Kind
  /// What happened, and what to do.
  public private(set) var message: String
  /// The file concerned, if any.
  public let file: String?
  /// The byte offset in `file` where the damage starts, for `damaged`.
  public let offset: Int64?
  /// The errno of the failed call, for `io` and `noSpace`.
  public let errno: Int32?
  /// For `damaged`: whether `--recover-truncate` (starting from the last good record) can
  /// get past it. Not when the records needed are missing rather than damaged.
  public var truncateHelps = true

  public init(
    _ kind: Kind, _ message: String, file: String? = nil, offset: Int64? = nil,
    errno: Int32? = nil
  ) {
    self.kind = kind
    self.message = message
    self.file = file
    self.offset = offset
    self.errno = errno
  }

  /// A failed file-system call (`noSpace` for ENOSPC and EDQUOT).
  public init(_ error: FileSystemError, _ context: String = "") {
    self.init(
      error.isNoSpace ? .noSpace : .io,
      context.isEmpty ? "\(error)" : "\(context): \(error)", file: error.path,
      errno: error.errno)
  }

  /// A snapshot written under another server secret: its suppression hashes would never
  /// match again, and its page tokens and receipts would not verify.
  static let wrongSecret = StorageError(
    .wrongSecret,
    "the data was written under another server secret: secret.key is not "
      + "the one backed up with this data")

  /// Damage at `offset` of `file`.
  public static func damaged(_ file: String, at offset: Int64, _ what: String) -> StorageError {
    StorageError(.damaged, "\(file) at byte offset \(offset): \(what)", file: file, offset: offset)
  }

  public var description: String { message }

  /// The same error, its message followed by `note` in parentheses (what led to it).
  public func explained(by note: String) -> StorageError {
    var e = self
    e.message = "\(message) (\(note))"
    return e
  }

  /// The process (or system) has no file descriptor left: passes once some are closed.
  public var isOutOfDescriptors: Bool { errno == EMFILE || errno == ENFILE }

  /// How a write that this error stopped is answered: `unavailable` (SPEC §3).
  public var coreError: CoreError { .unavailable("storage: \(message)") }
}
