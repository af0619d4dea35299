// SIGTERM/SIGINT handling for servers: block them in every thread (call before starting
// any), then wait for one synchronously on the main thread.

import Glibc

public enum TerminationSignals {
  /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it creates
  /// later (SIGHUP never ends the server: a closed terminal or SSH session leaves it
  /// running, as Redis does), and ignores SIGPIPE. Call first thing in `main`.
  public static func block() {
    signal(SIGPIPE, SIG_IGN)
    var set = Self.set
    pthread_sigmask(SIG_BLOCK, &set, nil)
  }

  private static var set: sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
    return set
  }

  /// Waits until SIGTERM or SIGINT arrives; returns its number. Each SIGHUP on the way
  /// calls `hangUp` (subcenterd reads its tokens and TLS files again).
  public static func wait(hangUp: () -> Void = {}) -> Int32 {
    var set = Self.set
    var sig: Int32 = 0
    while true {
      guard sigwait(&set, &sig) == 0 else { continue }
      if sig != SIGHUP { return sig }
      hangUp()
    }
  }
}
