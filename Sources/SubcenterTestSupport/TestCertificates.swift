// Throwaway TLS material for tests: a CA, a server certificate for localhost and
// 127.0.0.1, a client certificate, and a second unrelated CA, made once per process by the
// `openssl` command in a temporary directory that is removed at exit.

import Glibc
import Synchronization

/// A failure in the test-support helpers.
public struct TestSupportError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// PEM files of a throwaway PKI (ECDSA P-256, valid 30 days).
public struct TestCertificates: Sendable {
  public let directory: String
  /// The CA that signed the server and client certificates.
  public var caFile: String { directory + "/ca.pem" }
  public var serverCertificateFile: String { directory + "/server.pem" }
  public var serverKeyFile: String { directory + "/server.key" }
  public var clientCertificateFile: String { directory + "/client.pem" }
  public var clientKeyFile: String { directory + "/client.key" }
  /// A CA that signed nothing here: trusting only it must fail verification.
  public var otherCAFile: String { directory + "/other-ca.pem" }

  /// The certificates of this process, generated on first use.
  public static func shared() throws(TestSupportError) -> TestCertificates {
    try cached.get()
  }

  private static let cached: Result<TestCertificates, TestSupportError> = Result {
    () throws(TestSupportError) in try generate()
  }

  static let files = [
    "ca.key", "ca.pem", "other-ca.key", "other-ca.pem", "server.key", "server.pem",
    "client.key", "client.pem", "openssl.log",
  ]

  private static let script = """
    set -e
    cd "$1"
    exec 2>openssl.log
    ca() {
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -subj "/CN=$2" -days 30 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem"
    }
    leaf() {
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -subj "/CN=$2" -out "$1.csr"
      printf '%s\\n' "$3" "keyUsage=critical,digitalSignature" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -set_serial "$4" -days 30 \
        -sha256 -extfile "$1.ext" -out "$1.pem"
      rm -f "$1.csr" "$1.ext"
    }
    ca ca "Subcenter Test CA"
    ca other-ca "Unrelated Test CA"
    leaf server localhost \
      "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
    extendedKeyUsage=serverAuth" 1
    leaf client subcenter-test-client "extendedKeyUsage=clientAuth" 2
    """

  private static func generate() throws(TestSupportError) -> TestCertificates {
    var template = Array("/tmp/subcenter-test-certs-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw TestSupportError("mkdtemp failed") }
    let dir = String(cString: p)
    createdDirectory.withLock { $0 = dir }
    atexit {
      guard let dir = createdDirectory.withLock({ $0 }) else { return }
      for f in TestCertificates.files { unlink(dir + "/" + f) }
      rmdir(dir)
    }
    let status = spawnAndWait(["/bin/sh", "-c", script, "sh", dir])
    guard status == 0 else {
      throw TestSupportError("openssl failed (wait status \(status)); see \(dir)/openssl.log")
    }
    return TestCertificates(directory: dir)
  }
}

private let createdDirectory = Mutex<String?>(nil)

/// Runs `argv` and returns its wait status (0: exited with 0).
private func spawnAndWait(_ argv: [String]) -> Int32 {
  var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
  cArgs.append(nil)
  defer { for a in cArgs { free(a) } }
  var pid: pid_t = 0
  let rc = posix_spawn(&pid, argv[0], nil, nil, cArgs, environ)
  guard rc == 0 else { return -1 }
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 {
    if errno != EINTR { return -1 }
  }
  return status
}
