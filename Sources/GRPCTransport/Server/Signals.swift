// SIGTERM/SIGINT handling for servers: block them in every thread (call before starting
// any), then wait for one synchronously on the main thread.

import Glibc

public enum TerminationSignals {
  /// Blocks SIGTERM and SIGINT in the calling thread and every thread it creates later,
  /// and ignores SIGPIPE and SIGHUP (a closed terminal or SSH session leaves the server
  /// running, as Redis does). Call first thing in `main`.
  public static func block() {
    signal(SIGPIPE, SIG_IGN)
    signal(SIGHUP, SIG_IGN)
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGTERM)
    sigaddset(&set, SIGINT)
    pthread_sigmask(SIG_BLOCK, &set, nil)
  }

  /// Waits until SIGTERM or SIGINT arrives; returns its number.
  public static func wait() -> Int32 {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGTERM)
    sigaddset(&set, SIGINT)
    var sig: Int32 = 0
    while sigwait(&set, &sig) != 0 {}
    return sig
  }
}
