// The server secret: 32 random bytes in `<data>/secret.key` (mode 0600), created on first
// start. It keys suppression hashes, page tokens and erasure receipts: back it up with
// the data directory, and never change it (suppressions would stop matching).

import Foundation
import GRPCTransport
import SubcenterStore

public enum ServerSecret {
  /// Where the secret of `dataDirectory` is.
  public static func path(dataDirectory: String) -> String { dataDirectory + "/secret.key" }

  /// Reads an existing secret (tools such as `subcenterctl verify-receipt`).
  public static func load(dataDirectory: String) throws(FlagError) -> [UInt8] {
    let path = path(dataDirectory: dataDirectory)
    guard let data = FileManager.default.contents(atPath: path), data.count == 32 else {
      throw FlagError("--data: \(path) is missing or not a 32-byte secret")
    }
    return [UInt8](data)
  }

  /// Reads the secret, or creates it (temp file, fsync, rename) when absent from a data
  /// directory that holds no data yet. Data (a snapshot or a log segment) without its
  /// secret is refused: a new secret would make every suppression stop matching, silently.
  /// A bad or missing secret is a `FlagError` naming `origin` (the flag or variable that
  /// gave the directory); a secret that cannot be written (a full disk) a `StorageError`,
  /// with nothing left behind. `created` tells a new data directory.
  public static func loadOrCreate(dataDirectory: String, origin: String = "--data") throws
    -> (secret: [UInt8], created: Bool)
  {
    let path = path(dataDirectory: dataDirectory)
    if let data = FileManager.default.contents(atPath: path) {
      guard data.count == 32 else {
        throw FlagError("\(origin): \(path) must hold exactly 32 bytes, has \(data.count)")
      }
      return ([UInt8](data), false)
    }
    if let data = firstDataFile(in: dataDirectory) {
      throw FlagError(
        "\(origin): \(path) is missing, but the directory holds data (\(data)): restore the "
          + "secret.key that was backed up with it. A new secret would make every "
          + "suppression stop matching (suppressed people could be messaged again), and "
          + "earlier receipts and page tokens fail to verify")
    }
    let secret = Crypto.randomBytes(count: 32)
    do { try PosixFileSystem().replaceFile("secret.key", in: dataDirectory, with: secret) } catch {
      throw StorageError(error, "creating \(path)")
    }
    return (secret, true)
  }

  /// A snapshot or log segment in `directory`, if it holds any.
  private static func firstDataFile(in directory: String) -> String? {
    let fs = PosixFileSystem()
    let snapshot = try? SnapshotFile.list(directory: directory, fileSystem: fs).first?.name
    let segment = try? WALSegment.list(directory: directory, fileSystem: fs).first?.name
    return snapshot ?? segment
  }
}
