// The server secret: 32 random bytes in `<data>/secret.key` (mode 0600), created on first
// start. It keys suppression hashes, page tokens and erasure receipts: back it up with
// the data directory, and never change it (suppressions would stop matching).

import Foundation
import GRPCTransport
import SubcenterStore

public enum ServerSecret {
  /// Reads an existing secret (tools such as `subcenterctl verify-receipt`).
  public static func load(dataDirectory: String) throws(FlagError) -> [UInt8] {
    let path = dataDirectory + "/secret.key"
    guard let data = FileManager.default.contents(atPath: path), data.count == 32 else {
      throw FlagError("--data: \(path) is missing or not a 32-byte secret")
    }
    return [UInt8](data)
  }

  /// Reads the secret, or creates it (temp file, fsync, rename) when absent from a data
  /// directory that holds no data yet. Data (a snapshot or a log segment) without its
  /// secret is refused: a new secret would make every suppression stop matching, silently.
  public static func loadOrCreate(dataDirectory: String) throws(FlagError) -> [UInt8] {
    let path = dataDirectory + "/secret.key"
    if let data = FileManager.default.contents(atPath: path) {
      guard data.count == 32 else {
        throw FlagError("--data: \(path) must hold exactly 32 bytes, has \(data.count)")
      }
      return [UInt8](data)
    }
    if let data = firstDataFile(in: dataDirectory) {
      throw FlagError(
        "--data: \(path) is missing, but the directory holds data (\(data)): restore the "
          + "secret.key that was backed up with it. A new secret would make every "
          + "suppression stop matching (suppressed people could be messaged again), and "
          + "earlier receipts and page tokens fail to verify")
    }
    let secret = Crypto.randomBytes(count: 32)
    let tmp = path + ".tmp"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw FlagError("--data: cannot create \(tmp): errno \(errno)") }
    let written = secret.withUnsafeBytes { write(fd, $0.baseAddress, 32) }
    let synced = fsync(fd) == 0
    close(fd)
    guard written == 32, synced, rename(tmp, path) == 0 else {
      throw FlagError("--data: cannot write \(path): errno \(errno)")
    }
    let dir = open(dataDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dir >= 0 {
      fsync(dir)
      close(dir)
    }
    return secret
  }

  /// A snapshot or log segment in `directory`, if it holds any.
  private static func firstDataFile(in directory: String) -> String? {
    let fs = PosixFileSystem()
    let snapshot = try? SnapshotFile.list(directory: directory, fileSystem: fs).first?.name
    let segment = try? WALSegment.list(directory: directory, fileSystem: fs).first?.name
    return snapshot ?? segment
  }
}
