import FuzzSupport

// SwiftPM links a Linux executable with `main` aliased to `FuzzVirtioRequest_main`.
@_cdecl("FuzzVirtioRequest_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzVirtioRequest($0, size) } ?? 0 }
}
