// Command-line flags with environment fallback.

import Testing

@testable import GRPCTransport

@Suite struct FlagsTests {
  let specs = ServerConfiguration.flagSpecs

  func flags(_ args: [String], env: [String: String] = [:]) throws(FlagError) -> Flags {
    try Flags(arguments: args, environment: env, specs: specs)
  }

  func maxBytes(_ f: Flags) throws(FlagError) -> Int? {
    try f.int("max-message-bytes", in: 1...(1 << 30))
  }

  @Test func separateAndInlineValues() throws {
    #expect(try maxBytes(flags(["--max-message-bytes", "100"])) == 100)
    #expect(try maxBytes(flags(["--max-message-bytes=200"])) == 200)
    #expect(try flags(["--listen=127.0.0.1:1=2"]).string("listen") == "127.0.0.1:1=2")
  }

  @Test func environmentFallbackAndDefault() throws {
    #expect(try maxBytes(flags([], env: ["SUBCENTER_MAX_MESSAGE_BYTES": "300"])) == 300)
    #expect(try maxBytes(flags([])) == 4_194_304)
    #expect(try flags([]).string("client-ca") == nil)
  }

  @Test func flagBeatsEnvironment() throws {
    let f = try flags(["--max-message-bytes", "100"], env: ["SUBCENTER_MAX_MESSAGE_BYTES": "300"])
    #expect(try maxBytes(f) == 100)
  }

  /// `uint64` takes 0 to 2^64 - 1 and refuses one past it, a sign or a non-number, naming
  /// the flag and the range.
  @Test func unsigned64BitValues() throws {
    #expect(try flags(["--max-message-bytes", "0"]).uint64("max-message-bytes") == 0)
    #expect(
      try flags(["--max-message-bytes", "18446744073709551615"]).uint64("max-message-bytes")
        == UInt64.max)
    #expect(try flags([]).uint64("client-ca") == nil)
    for bad in ["18446744073709551616", "-1", "1e3", ""] {
      let e = #expect(throws: FlagError.self) {
        try flags(["--max-message-bytes", bad]).uint64("max-message-bytes")
      }
      #expect(e?.description.contains("--max-message-bytes") == true, "\(bad)")
      #expect(e?.description.contains("18446744073709551615") == true, "\(bad)")
    }
  }

  @Test func unknownFlagRefused() {
    let e = #expect(throws: FlagError.self) { try flags(["--nope", "1"]) }
    #expect(e?.description.contains("--nope") == true)
    let e2 = #expect(throws: FlagError.self) { try flags(["positional"]) }
    #expect(e2?.description.contains("positional") == true)
  }

  @Test func missingValueRefused() {
    let e = #expect(throws: FlagError.self) { try flags(["--listen"]) }
    #expect(e?.description == "--listen needs a value")
  }

  @Test func outOfRangeNamesTheFlag() throws {
    let f = try flags(["--max-message-bytes", "0"])
    let e = #expect(throws: FlagError.self) { try maxBytes(f) }
    #expect(e?.description.hasPrefix("--max-message-bytes:") == true)
    #expect(e?.description.contains("got '0'") == true)

    let g = try flags(["--max-message-bytes=lots"])
    #expect(throws: FlagError.self) { try maxBytes(g) }
  }

  @Test func outOfRangeFromEnvironmentNamesTheVariable() throws {
    let f = try flags([], env: ["SUBCENTER_MAX_MESSAGE_BYTES": "2147483648"])
    let e = #expect(throws: FlagError.self) { try maxBytes(f) }
    let text = try #require(e?.description)
    #expect(text.contains("SUBCENTER_MAX_MESSAGE_BYTES"))
    #expect(text.contains("--max-message-bytes"))
    #expect(text.contains("got '2147483648'"))
  }

  /// A boolean is on when given bare or `true`/`1`, off when absent or `false`/`0`; an
  /// empty value (a blank variable in a template) is refused, not taken for "on".
  @Test func booleans() throws {
    let specs = [
      FlagSpec("wipe", value: false, help: ""), FlagSpec("help", value: false, help: ""),
    ]
    func wipe(_ args: [String], env: [String: String] = [:]) throws(FlagError) -> Bool {
      try Flags(arguments: args, environment: env, specs: specs).bool("wipe")
    }
    #expect(try wipe(["--wipe"]) && wipe(["--wipe=1"]) && wipe([], env: ["SUBCENTER_WIPE": "true"]))
    #expect(try !wipe([]) && !wipe(["--wipe=false"]) && !wipe([], env: ["SUBCENTER_WIPE": "0"]))
    let e = #expect(throws: FlagError.self) { try wipe(["--wipe="]) }
    #expect(e?.description == "--wipe: expected true, false, 1 or 0, got ''")
    let v = #expect(throws: FlagError.self) { try wipe([], env: ["SUBCENTER_WIPE": ""]) }
    #expect(
      v?.description.hasPrefix("SUBCENTER_WIPE (--wipe): expected true, false, 1 or 0") == true)
    #expect(throws: FlagError.self) { try wipe([], env: ["SUBCENTER_WIPE": "yes"]) }
    // --help only from the command line: a variable must not keep a server from starting.
    let f = try Flags(arguments: [], environment: ["SUBCENTER_HELP": "1"], specs: specs)
    #expect(try !f.bool("help"))
  }

  @Test(
    arguments: [
      ("127.0.0.1:0", "127.0.0.1", 0), ("[::1]:50051", "::1", 50051),
      ("localhost:1", "127.0.0.1", 1), ("0.0.0.0:65535", "0.0.0.0", 65535),
    ] as [(String, String, UInt16)])
  func addresses(text: String, host: String, port: UInt16) throws {
    let a = try #require(try flags(["--listen", text]).address("listen"))
    #expect(a.host == host)
    #expect(a.port == port)
  }

  @Test func ipv6AddressDescription() throws {
    let a = try #require(try flags(["--listen=[::1]:50051"]).address("listen"))
    #expect(a.description == "[::1]:50051")
  }

  @Test(arguments: [
    "nohost", "1.2.3.4:99999", ":50051", "example.com:80", "1.2.3.4:", "1.2.3.4:-1",
  ])
  func badAddressesRefused(text: String) throws {
    let f = try flags(["--listen", text])
    let e = #expect(throws: FlagError.self) { try f.address("listen") }
    #expect(e?.description.hasPrefix("--listen:") == true)
    #expect(e?.description.contains(text) == true)
  }
}
