import FuzzSupport

// SwiftPM links a Linux executable with `main` aliased to `FuzzScenario_main`.
@_cdecl("FuzzScenario_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzScenario($0, size) } ?? 0 }
}
