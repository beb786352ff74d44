import IOMMUBase
import PhysicalMemory

/// A bounce-buffer pool: Linux swiotlb, reduced to what dma-iommu uses for untrusted devices.
///
/// Slots are granule-sized and granule-aligned (Linux maps with alloc_align_mask = granule - 1),
/// taken from the frame allocator once at setup. A bounced buffer starts at its slot's start; the
/// rest of its granules (pre- and post-padding) is zeroed, so the device sees nothing but the
/// buffer and zeros.
public final class BouncePool: Sendable {
    public let memory: PhysicalMemory
    public let base: PhysAddr
    public let slotSize: UInt64
    public let slotCount: Int

    struct Slot: Sendable {
        var original: PhysAddr
        var length: UInt64
        var slots: Int
    }

    struct State: Sendable {
        var used: [Bool]
        var live: [UInt64: Slot] = [:]
        var inUse = 0
    }

    let state: IOMMUMutex<State>
    /// Fault injection for slot allocation: the armed `map` finds no slots, as if the pool were
    /// full (Linux: `swiotlb_tbl_map_single` failing; the map returns `DMA_MAPPING_ERROR`).
    public let failNth = FailNth()

    /// Takes `bytes` (rounded up to the granule) of contiguous frames from `frames`.
    public init(frames: FrameAllocator, bytes: UInt64, granule: PageSize) throws(IOMMUError) {
        self.memory = frames.memory
        self.slotSize = max(granule.bytes, PhysicalMemory.pageSize.bytes)
        let pages = Int((bytes + PhysicalMemory.pageSize.mask) >> UInt64(PhysicalMemory.pageSize.shift))
        guard pages > 0 else { throw IOMMUError(.invalidArgument, length: bytes) }
        // Contiguous: allocate page by page and require contiguity (the frame allocator hands out
        // ascending frames from a fresh region); else fall back to fewer slots.
        var first: PhysAddr?
        var count = 0
        for _ in 0..<pages {
            let frame: PhysAddr
            do { frame = try frames.allocate(.size4K) } catch {
                // Give back what was taken so far (found by the fail_nth sweep: they leaked).
                if let first { for i in 0..<count { frames.free(PhysAddr(first.rawValue + UInt64(i) * 4096), .size4K) } }
                throw error
            }
            if let f = first, frame.rawValue != f.rawValue + UInt64(count) * 4096 { frames.free(frame, .size4K); break }
            if first == nil { first = frame }
            count += 1
        }
        self.base = first!
        let slots = Int(UInt64(count) * 4096 / slotSize)
        self.slotCount = slots
        self.state = IOMMUMutex(State(used: Array(repeating: false, count: slots)))
        try memory.fill(base, length: UInt64(count) * 4096, with: 0)
    }

    public var slotsInUse: Int { state.withLock { $0.inUse } }

    public func contains(_ address: PhysAddr) -> Bool {
        address.rawValue >= base.rawValue && address.rawValue - base.rawValue < UInt64(slotCount) * slotSize
    }

    /// Copies `length` bytes at `original` into fresh slots (always, whatever the direction, so the
    /// device never sees old pool contents) and zeroes the padding. Linux: `swiotlb_tbl_map_single`.
    /// - Returns: the bounce address (granule-aligned), or nil if the pool is full.
    func map(original: PhysAddr, length: UInt64) -> PhysAddr? {
        let needed = Int((length + slotSize - 1) / slotSize)
        if failNth.shouldFail() { return nil }
        let start: Int? = state.withLock { s in
            var run = 0
            for i in 0..<s.used.count {
                run = s.used[i] ? 0 : run + 1
                if run == needed {
                    let first = i + 1 - needed
                    for j in first...i { s.used[j] = true }
                    s.inUse += needed
                    s.live[base.rawValue + UInt64(first) * slotSize] = Slot(original: original, length: length, slots: needed)
                    return first
                }
            }
            return nil
        }
        guard let start else { return nil }
        let bounce = PhysAddr(base.rawValue + UInt64(start) * slotSize)
        copy(from: original, to: bounce, length: length)
        let padding = UInt64(needed) * slotSize - length
        if padding != 0 { try? memory.fill(PhysAddr(bounce.rawValue + length), length: padding, with: 0) }
        return bounce
    }

    /// Linux: `swiotlb_sync_single_for_cpu/device` within a bounced buffer.
    func sync(bounce: PhysAddr, toDevice: Bool) {
        guard let slot = state.withLock({ $0.live[bounce.rawValue] }) else { return }
        if toDevice { copy(from: slot.original, to: bounce, length: slot.length) } else { copy(from: bounce, to: slot.original, length: slot.length) }
    }

    /// Copies back (if the device may have written) and releases. Linux: `swiotlb_tbl_unmap_single`.
    func unmap(bounce: PhysAddr, copyBack: Bool) {
        guard let slot = state.withLock({ $0.live[bounce.rawValue] }) else { return }
        if copyBack { copy(from: bounce, to: slot.original, length: slot.length) }
        try? memory.fill(bounce, length: UInt64(slot.slots) * slotSize, with: 0)
        state.withLock { s in
            s.live[bounce.rawValue] = nil
            let first = Int((bounce.rawValue - base.rawValue) / slotSize)
            for j in first..<(first + slot.slots) { s.used[j] = false }
            s.inUse -= slot.slots
        }
    }

    private func copy(from: PhysAddr, to: PhysAddr, length: UInt64) {
        guard length > 0 else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(length), alignment: 8)
        defer { buffer.deallocate() }
        try? memory.read(from, into: buffer)
        try? memory.write(to, from: UnsafeRawBufferPointer(buffer))
    }
}
