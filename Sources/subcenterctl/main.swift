import GRPCTransport
import Glibc

let status = Ctl.run()
if standardOutputFailed {
  // A token from `token create` that never reached its file is lost: not "done".
  writeStderrLine("subcenterctl: the output could not be written (standard output)")
  exit(status == 0 ? 1 : status)
}
exit(status)
