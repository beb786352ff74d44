import FuzzSupport

// SwiftPM links a Linux executable with `main` aliased to `FuzzVFIOIoctl_main`.
@_cdecl("FuzzVFIOIoctl_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzVFIOIoctl($0, size) } ?? 0 }
}
