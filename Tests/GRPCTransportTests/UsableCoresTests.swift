// UsableCores: the default count of event loops from the cores online, the affinity mask and
// the cgroup CPU quota (the real taskset and cgroup cases are interop tests, test_subcenterd.py).

import Testing

@testable import GRPCTransport

@Suite struct UsableCoresTests {
  @Test func theSmallestBoundWinsAndAQuotaRoundsUp() {
    #expect(UsableCores.combine(online: 8, affinity: 8, quota: nil) == 8)
    #expect(UsableCores.combine(online: 8, affinity: 3, quota: nil) == 3)
    #expect(UsableCores.combine(online: 8, affinity: 8, quota: 2.0) == 2)
    #expect(UsableCores.combine(online: 8, affinity: 8, quota: 2.01) == 3)
    #expect(UsableCores.combine(online: 8, affinity: 2, quota: 6) == 2)
    #expect(UsableCores.combine(online: 8, affinity: 8, quota: 0.1) == 1)
    // Unknown bounds (0 or less) are ignored; nothing known is one loop.
    #expect(UsableCores.combine(online: 4, affinity: 0, quota: nil) == 4)
    #expect(UsableCores.combine(online: -1, affinity: 0, quota: nil) == 1)
    #expect(UsableCores.combine(online: -1, affinity: 0, quota: 0) == 1)
  }

  @Test func quotaFiles() {
    #expect(UsableCores.cpuMax("150000 100000\n") == 1.5)
    #expect(UsableCores.cpuMax("max 100000\n") == nil)
    #expect(UsableCores.cpuMax("0 100000") == nil)
    #expect(UsableCores.cpuMax("") == nil)
    #expect(UsableCores.cpuMax("150000") == nil)
    #expect(UsableCores.cfsQuota("200000\n", period: "100000\n") == 2)
    #expect(UsableCores.cfsQuota("-1\n", period: "100000\n") == nil)
    #expect(UsableCores.cfsQuota("50000", period: "0") == nil)
  }

  @Test func mountsHoldingTheCPUController() {
    let mountinfo = """
      22 1 0:20 / /sys rw,nosuid shared:7 - sysfs sysfs rw
      30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
      31 22 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpu,cpuacct
      32 22 0:28 / /sys/fs/cgroup/cpuacct rw shared:11 - cgroup cgroup rw,cpuacct
      33 22 0:29 /kube/pod1 /mnt/my\\040cgroup rw - cgroup cgroup rw,cpu
      garbage line
      """
    #expect(
      UsableCores.cgroupMounts(mountinfo) == [
        .init(point: "/sys/fs/cgroup", root: "/", version2: true),
        .init(point: "/sys/fs/cgroup/cpu,cpuacct", root: "/", version2: false),
        .init(point: "/mnt/my cgroup", root: "/kube/pod1", version2: false),
      ])
  }

  @Test func theProcessCgroupAndItsAncestors() {
    let cgroups = "12:cpu,cpuacct:/kube/pod1/c1\n3:memory:/kube/pod1/c1\n0::/user.slice/app\n"
    #expect(UsableCores.cgroupPath(cgroups, version2: true) == "/user.slice/app")
    #expect(UsableCores.cgroupPath(cgroups, version2: false) == "/kube/pod1/c1")
    #expect(UsableCores.cgroupPath("3:memory:/x\n", version2: false) == nil)
    #expect(UsableCores.relativePath("/a/b", under: "/") == "/a/b")
    #expect(UsableCores.relativePath("/", under: "/") == "")
    #expect(UsableCores.relativePath("/kube/pod1/c1", under: "/kube/pod1") == "/c1")
    #expect(UsableCores.relativePath("/kube/pod1", under: "/kube/pod1") == "")
    #expect(UsableCores.relativePath("/kube/pod10", under: "/kube/pod1") == nil)
    #expect(
      UsableCores.directories("/sys/fs/cgroup", "/a/b") == [
        "/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a", "/sys/fs/cgroup",
      ])
    #expect(UsableCores.directories("/sys/fs/cgroup", "") == ["/sys/fs/cgroup"])
  }

  @Test func theLowestQuotaOnThePathCounts() {
    let mountinfo = """
      30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
      31 22 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
      """
    let cgroups = "1:cpu:/pod\n0::/pod/app\n"
    var files = [
      "/sys/fs/cgroup/pod/app/cpu.max": "max 100000\n",
      "/sys/fs/cgroup/pod/cpu.max": "300000 100000\n",
      "/sys/fs/cgroup/cpu/pod/cpu.cfs_quota_us": "-1\n",
      "/sys/fs/cgroup/cpu/pod/cpu.cfs_period_us": "100000\n",
    ]
    #expect(UsableCores.cgroupQuota(cgroups: cgroups, mountinfo: mountinfo) { files[$0] } == 3)
    files["/sys/fs/cgroup/cpu/pod/cpu.cfs_quota_us"] = "250000\n"
    #expect(UsableCores.cgroupQuota(cgroups: cgroups, mountinfo: mountinfo) { files[$0] } == 2.5)
    // No quota anywhere, or no cgroup files at all: no bound.
    #expect(
      UsableCores.cgroupQuota(cgroups: cgroups, mountinfo: mountinfo) { _ in "max 100000" }
        == nil)
    #expect(UsableCores.cgroupQuota(cgroups: "", mountinfo: "") { _ in nil } == nil)
  }

  @Test func thisProcessHasAtLeastOneCore() {
    #expect(UsableCores.count >= 1)
    #expect(UsableCores.readSmallFile("/proc/self/cgroup") != nil)
    #expect(UsableCores.readSmallFile("/nonexistent/file") == nil)
  }
}
