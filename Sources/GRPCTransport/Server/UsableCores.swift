// How many cores this process may use: the default count of event loops (`--loops`).
//
// The smallest of three bounds:
// - the cores online;
// - the CPUs the process's affinity mask allows (`taskset`, a cpuset cgroup);
// - the CPU quota of its cgroup and of every cgroup above it, rounded up: `cpu.max` under
//   cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` under v1 (what a container's CPU
//   limit sets). The cgroups come from `/proc/self/cgroup`, where they are mounted from
//   `/proc/self/mountinfo`.
// A file that is missing or unreadable bounds nothing. More loops than that would only
// take turns on the same CPU time, each holding its share of the connections.

import CLinux
import Glibc

/// The cores this process may use (affinity and cgroup CPU quota included).
public enum UsableCores {
  /// The cores this process may use now, at least 1.
  public static var count: Int {
    let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    let affinity = Int(CLinux_affinity_cpu_count())
    let quota = cgroupQuota(
      cgroups: readSmallFile("/proc/self/cgroup") ?? "",
      mountinfo: readSmallFile("/proc/self/mountinfo") ?? "", read: readSmallFile)
    return combine(online: online, affinity: affinity, quota: quota)
  }

  /// The smallest bound (a bound of 0 or less is unknown and ignored), at least 1; a
  /// fractional quota is rounded up (1.5 cores: 2 loops).
  static func combine(online: Int, affinity: Int, quota: Double?) -> Int {
    var n = Int.max
    if online > 0 { n = online }
    if affinity > 0 { n = min(n, affinity) }
    if let quota, quota > 0 { n = min(n, Int(quota.rounded(.up))) }
    return n == .max ? 1 : max(1, n)
  }

  /// The lowest CPU quota, in cores, of the process's cgroups and their ancestors (nil
  /// when none sets one). `cgroups` is `/proc/self/cgroup`, `mountinfo`
  /// `/proc/self/mountinfo`; `read` returns a file's text.
  static func cgroupQuota(
    cgroups: String, mountinfo: String, read: (String) -> String?
  ) -> Double? {
    var lowest: Double?
    func bound(_ q: Double?) {
      if let q { lowest = min(lowest ?? q, q) }
    }
    for mount in cgroupMounts(mountinfo) {
      guard let path = cgroupPath(cgroups, version2: mount.version2),
        let relative = relativePath(path, under: mount.root)
      else { continue }
      for dir in directories(mount.point, relative) {
        if mount.version2 {
          bound(read(dir + "/cpu.max").flatMap(cpuMax))
        } else if let quota = read(dir + "/cpu.cfs_quota_us"),
          let period = read(dir + "/cpu.cfs_period_us")
        {
          bound(cfsQuota(quota, period: period))
        }
      }
    }
    return lowest
  }

  /// A cgroup v2 `cpu.max` ("QUOTA PERIOD", or "max PERIOD" for none) in cores.
  static func cpuMax(_ text: String) -> Double? {
    let parts = text.split(whereSeparator: \.isWhitespace)
    guard parts.count == 2, let quota = Double(parts[0]), let period = Double(parts[1]),
      quota > 0, period > 0
    else { return nil }
    return quota / period
  }

  /// A cgroup v1 quota and period in microseconds (a quota of -1: none) in cores.
  static func cfsQuota(_ quota: String, period: String) -> Double? {
    guard let q = Double(trimmed(quota)), let p = Double(trimmed(period)), q > 0, p > 0
    else { return nil }
    return q / p
  }

  /// A cgroup file system mounted where the CPU controller's files are: cgroup v2, or a v1
  /// hierarchy holding the `cpu` controller.
  struct Mount: Equatable {
    var point: String
    /// The cgroup the mount shows at `point` (`/` unless a container mounted its own).
    var root: String
    var version2: Bool
  }

  /// The cgroup mounts of `/proc/self/mountinfo` that hold the CPU controller's files.
  static func cgroupMounts(_ mountinfo: String) -> [Mount] {
    var mounts: [Mount] = []
    for line in mountinfo.split(separator: "\n") {
      // ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
      let fields = line.split(separator: " ")
      guard fields.count >= 7, let dash = fields.firstIndex(of: "-"), dash + 3 < fields.count
      else { continue }
      let type = fields[dash + 1]
      let superOptions = fields[dash + 3].split(separator: ",")
      let root = unescape(fields[3])
      let point = unescape(fields[4])
      if type == "cgroup2" {
        mounts.append(Mount(point: point, root: root, version2: true))
      } else if type == "cgroup", superOptions.contains("cpu") {
        mounts.append(Mount(point: point, root: root, version2: false))
      }
    }
    return mounts
  }

  /// The process's cgroup path from `/proc/self/cgroup` ("ID:CONTROLLERS:PATH" lines): the
  /// v2 one ("0::PATH") or the v1 one whose controllers include `cpu`.
  static func cgroupPath(_ cgroups: String, version2: Bool) -> String? {
    for line in cgroups.split(separator: "\n") {
      let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
      guard fields.count == 3 else { continue }
      let controllers = fields[1].split(separator: ",")
      if version2 ? (fields[0] == "0" && controllers.isEmpty) : controllers.contains("cpu") {
        return String(fields[2])
      }
    }
    return nil
  }

  /// `path` relative to the cgroup `root` a mount shows ("" for the root itself); nil when
  /// the mount does not show that cgroup.
  static func relativePath(_ path: String, under root: String) -> String? {
    if root == "/" { return path == "/" ? "" : path }
    if path == root { return "" }
    return path.hasPrefix(root + "/") ? String(path.dropFirst(root.count)) : nil
  }

  /// The directory of the cgroup at `relative` under `point`, then each one above it, up
  /// to the mount point itself.
  static func directories(_ point: String, _ relative: String) -> [String] {
    let base = point == "/" ? "" : point
    var parts = relative.split(separator: "/")
    var dirs: [String] = []
    while true {
      dirs.append(parts.isEmpty ? point : base + "/" + parts.joined(separator: "/"))
      if parts.isEmpty { return dirs }
      parts.removeLast()
    }
  }

  /// A mountinfo field with its octal escapes (`\040` for a space) decoded.
  private static func unescape(_ field: Substring) -> String {
    guard field.contains("\\") else { return String(field) }
    var bytes: [UInt8] = []
    var u = Array(field.utf8)[...]
    while let b = u.popFirst() {
      if b == UInt8(ascii: "\\"), u.count >= 3,
        let v = UInt8(String(decoding: u.prefix(3), as: UTF8.self), radix: 8)
      {
        bytes.append(v)
        u = u.dropFirst(3)
      } else {
        bytes.append(b)
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  private static func trimmed(_ s: String) -> Substring {
    s.split(whereSeparator: \.isWhitespace).first ?? ""
  }

  /// The text of a small file (a /proc or /sys entry), nil if it cannot be read.
  static func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < 1 << 20 {
      let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      if n < 0 && errno == EINTR { continue }
      guard n > 0 else { return n == 0 ? String(decoding: bytes, as: UTF8.self) : nil }
      bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}
