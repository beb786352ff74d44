import IOMMUBase
import Synchronization

/// Hands out naturally aligned, zeroed physical frames from RAM, for page tables and buffers,
/// and counts what is in use so a test can prove that nothing leaks.
///
/// Linux: the page allocator as io-pgtable and dma-iommu use it (`__get_free_pages` /
/// `alloc_pages` with `__GFP_ZERO`). A frame of size 2^n is aligned to 2^n, like a buddy block.
/// Freed frames are kept on a per-size free list and reused first.
public final class FrameAllocator: Sendable {
    private struct State {
        var next: UInt64
        var freeLists: [Int: [UInt64]] = [:]
        var live: [UInt64: Int] = [:]
        var bytesInUse: UInt64 = 0
        var peakBytesInUse: UInt64 = 0
    }

    /// The memory the frames live in.
    public let memory: PhysicalMemory
    /// The physical range frames are carved from.
    public let region: PhysRange
    /// The most bytes that may be in use at once (an out-of-memory model); `nil` = all of `region`.
    public let limitBytes: UInt64?
    /// Arm it to make the N-th allocation fail with ENOMEM.
    public let failNth = FailNth()

    private let state: IOMMUMutex<State>

    /// - Parameters:
    ///   - memory: where the frames are.
    ///   - region: which part of RAM to carve; defaults to all of `memory.ram`.
    ///   - limitBytes: simulate a small machine: allocations beyond this fail with ENOMEM.
    public init(memory: PhysicalMemory, region: PhysRange? = nil, limitBytes: UInt64? = nil) {
        let region = region ?? memory.ram
        precondition(memory.ram.contains(region), "frames must come from RAM")
        self.memory = memory
        self.region = region
        self.limitBytes = limitBytes
        self.state = IOMMUMutex(State(next: region.first.rawValue))
    }

    /// Allocates one zeroed frame of `size` bytes, aligned to `size`.
    ///
    /// Throws `outOfMemory` (ENOMEM) when the region or the limit is exhausted, or when `failNth`
    /// says so; nothing changes then.
    public func allocate(_ size: PageSize) throws(IOMMUError) -> PhysAddr {
        precondition(size.shift >= PhysicalMemory.pageSize.shift, "frames are at least 4 KiB")
        if failNth.shouldFail() { throw IOMMUError(.outOfMemory, length: size.bytes) }
        let address = state.withLock { state -> UInt64? in
            if let limitBytes, state.bytesInUse + size.bytes > limitBytes { return nil }
            let address: UInt64
            if let reused = state.freeLists[size.shift]?.popLast() {
                address = reused
            } else {
                guard let aligned = alignUp(state.next, to: size),
                      aligned <= region.last.rawValue,
                      region.last.rawValue - aligned >= size.mask
                else { return nil }
                address = aligned
                // Carve the alignment slack into smaller free frames so nothing is lost.
                var slackStart = state.next
                while slackStart < aligned {
                    let shift = min(slackStart.trailingZeroBitCount, fls(aligned - slackStart) - 1)
                    state.freeLists[shift, default: []].append(slackStart)
                    slackStart += UInt64(1) << UInt64(shift)
                }
                state.next = aligned + size.bytes
            }
            state.live[address] = size.shift
            state.bytesInUse += size.bytes
            state.peakBytesInUse = max(state.peakBytesInUse, state.bytesInUse)
            return address
        }
        guard let address else { throw IOMMUError(.outOfMemory, length: size.bytes) }
        try! memory.fill(PhysAddr(address), length: size.bytes, with: 0)
        return PhysAddr(address)
    }

    /// Returns a frame. Freeing a frame that is not live, or with another size, is a bug inside
    /// IOMMUKit and stops the process.
    public func free(_ address: PhysAddr, _ size: PageSize) {
        state.withLock { state in
            guard let shift = state.live.removeValue(forKey: address.rawValue) else {
                preconditionFailure("free of a frame that is not allocated: \(address)")
            }
            precondition(shift == size.shift, "frame \(address) freed with the wrong size")
            state.bytesInUse -= size.bytes
            state.freeLists[shift, default: []].append(address.rawValue)
        }
    }

    /// True if `address` is the start of a live frame.
    public func isAllocated(_ address: PhysAddr) -> Bool {
        state.withLock { $0.live[address.rawValue] != nil }
    }

    /// Frames currently allocated.
    public var framesInUse: Int { state.withLock { $0.live.count } }
    /// Bytes currently allocated.
    public var bytesInUse: UInt64 { state.withLock { $0.bytesInUse } }
    /// The most bytes that were ever allocated at once.
    public var peakBytesInUse: UInt64 { state.withLock { $0.peakBytesInUse } }
}
