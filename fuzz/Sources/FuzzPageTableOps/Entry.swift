import FuzzSupport

// SwiftPM links a Linux executable with `main` aliased to `FuzzPageTableOps_main`.
@_cdecl("FuzzPageTableOps_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzPageTableOps($0, size) } ?? 0 }
}
