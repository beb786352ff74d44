import FuzzSupport

// SwiftPM links a Linux executable with `main` aliased to `FuzzTraceLine_main`.
@_cdecl("FuzzTraceLine_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzTraceLine($0, size) } ?? 0 }
}
