import IOMMUKit

let memory = try! PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 2 << 30)
let frames = FrameAllocator(memory: memory, region: PhysRange(start: PhysAddr(0xC000_0000), length: 1 << 30)!)

/// Fuzzes the virtio-iommu request queue at the byte level (`handleRequest(readable:
/// writableLength:)`, the path every virtqueue chain takes). The input is a sequence of requests,
/// each `[readable length: u8][writable length: u8][readable bytes]`, sent to a fresh device
/// (Linux driver features, endpoints 1, 2 (with a reserved and an MSI region) and 3 (stage 2)).
/// After every request: the used length fits the writable buffer, and
/// `VirtioIOMMUDevice.checkConsistency()` (mapping records vs. page tables vs. hardware walk)
/// is empty. A reset at the end must return every page-table frame.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let baseline = frames.framesInUse
    do {
        let device = try VirtioIOMMUDevice(memory: memory, frames: frames)
        try device.addEndpoint(1)
        try device.addEndpoint(2, VirtioEndpointConfiguration(reservedRegions: [
            ReservedRegion(start: 0x1000, length: 0x1000, prot: [], type: .reserved),
            ReservedRegion(start: 0xFEE0_0000, length: 0x10_0000, prot: [.write], type: .msi),
        ]))
        try device.addEndpoint(3, VirtioEndpointConfiguration(table: VirtioTableSpec(kind: .armLPAEStage2, granule: .size4K)))
        guard device.negotiate(driverFeatures: .linuxDriver) else { fatalError("negotiation failed") }
        var offset = 0
        var requests = 0
        while offset + 2 <= bytes.count && requests < 64 {
            let readableLength = Int(bytes[offset])
            let writableLength = Int(bytes[offset + 1])
            offset += 2
            let end = min(bytes.count, offset + readableLength)
            let readable = Array(bytes[offset..<end])
            offset = end
            requests += 1
            // Keep each input fast: skip a MAP of more than 64 MiB (an unaligned one is mapped
            // with millions of 4 KiB pages, ~100 ms, which starves the search).
            if readable.count >= 24 && readable[0] == 3 {
                func le64(_ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(readable[at + $1]) << (8 * UInt64($1)) } }
                if le64(16) &- le64(8) >= 64 << 20 { continue }
            }
            let (written, used) = device.handleRequest(readable: readable, writableLength: writableLength)
            if Int(used) > writableLength || written.count < Int(used) {
                fatalError("used length \(used) for a \(writableLength)-byte writable buffer")
            }
            let problems = device.checkConsistency()
            if !problems.isEmpty { fatalError("request \(requests) \(readable): \(problems)") }
        }
        device.reset()
        if !device.checkConsistency().isEmpty { fatalError("inconsistent after reset: \(device.checkConsistency())") }
    } catch {
        fatalError("setup failed: \(error)")
    }
    if frames.framesInUse != baseline { fatalError("leaked \(frames.framesInUse - baseline) frames") }
    return 0
}
