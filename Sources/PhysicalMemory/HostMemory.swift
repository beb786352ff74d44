import IOMMUBase
import Synchronization

/// A model of one user process's address space, as the VFIO type1 backend sees it: regions of
/// virtual memory, the physical pages behind them, per-page pin counts, and the process's
/// locked-memory accounting.
///
/// Linux counterparts: the process's VMAs (`mmap`/`munmap`), page faults that back anonymous
/// memory on first touch, `pin_user_pages_remote()` (page pins; fails on `VM_PFNMAP`),
/// `follow_fault_pfn()` for PFNMAP device memory, `mm->locked_vm` against `RLIMIT_MEMLOCK`
/// with the `CAP_IPC_LOCK` exemption (`vfio_lock_acct()`).
///
/// A page that is unmapped while pinned stays allocated until its last pin goes, exactly as a
/// pinned page outlives `munmap` in Linux: a device that was given it can still reach it, and
/// it is never handed to anyone else meanwhile.
public final class HostMemory: Sendable {
    /// What backs a region.
    public enum Backing: Hashable, Sendable, CustomStringConvertible {
        /// Ordinary anonymous memory: 4 KiB pages, each backed by its own frame on first touch.
        case anonymous
        /// hugetlbfs-like memory: each 2 MiB of the region is one physically contiguous frame.
        case hugePages2M
        /// Device memory (`VM_PFNMAP`): maps the physical range starting at the given address;
        /// not RAM, cannot be pinned, not accounted as locked memory.
        case device(PhysAddr)

        public var description: String {
            switch self {
            case .anonymous: "anonymous"
            case .hugePages2M: "huge-2M"
            case .device(let base): "device@\(base)"
            }
        }
    }

    /// One mapped region.
    public struct Region: Hashable, Sendable, CustomStringConvertible {
        public let range: VirtRange
        public let backing: Backing
        public let writable: Bool
        public var description: String { "\(range) \(backing)\(writable ? "" : " read-only")" }
    }

    private struct FrameRecord {
        let size: PageSize
        var mapped: Bool
        var pins: Int
    }

    private struct State {
        var regions: [Region] = []  // sorted by first address, non-overlapping
        var nextAddress: UInt64
        var pages: [UInt64: UInt64] = [:]  // 4 KiB virtual page number -> frame address (anonymous)
        var hugePages: [UInt64: UInt64] = [:]  // 2 MiB virtual page number -> frame address
        var frames: [UInt64: FrameRecord] = [:]  // frame address -> record
        var pagePins: [UInt64: Int] = [:]  // 4 KiB physical page -> pin count
        var lockedPages: UInt64 = 0
    }

    public let memory: PhysicalMemory
    public let frames: FrameAllocator
    /// `RLIMIT_MEMLOCK` in bytes.
    public let lockedMemoryLimit: UInt64
    /// The process holds `CAP_IPC_LOCK`: the limit is not enforced (accounting still counts).
    public let hasIPCLock: Bool
    /// Arm it to make the N-th pin request fail (EFAULT, nothing pinned).
    public let pinFailNth = FailNth()

    private let state: IOMMUMutex<State>

    /// The base page size of the process.
    public static let pageSize = PageSize.size4K
    /// Where `map` places regions when no address is given.
    public static let defaultMapBase = VirtAddr(0x7F00_0000_0000)

    public init(memory: PhysicalMemory, frames: FrameAllocator, lockedMemoryLimit: UInt64 = 8 << 20, hasIPCLock: Bool = false) {
        self.memory = memory
        self.frames = frames
        self.lockedMemoryLimit = lockedMemoryLimit
        self.hasIPCLock = hasIPCLock
        self.state = IOMMUMutex(State(nextAddress: Self.defaultMapBase.rawValue))
    }

    // MARK: - Regions (mmap / munmap)

    /// Maps a new region (Linux: `mmap`). Anonymous and huge-page memory is backed on first touch.
    ///
    /// - Throws: `unaligned` (EINVAL) for an address or length not page aligned (2 MiB for huge
    ///   pages), `alreadyMapped` (EEXIST) if `address` overlaps a region, `lengthOverflow`.
    @discardableResult
    public func map(length: UInt64, backing: Backing = .anonymous, at address: VirtAddr? = nil, writable: Bool = true) throws(IOMMUError) -> VirtRange {
        let alignment: PageSize = backing == .hugePages2M ? .size2M : Self.pageSize
        if case .device(let base) = backing, !base.isAligned(to: Self.pageSize) {
            throw IOMMUError(.unaligned, address: base.rawValue, length: length)
        }
        return try state.withLock { (state) throws(IOMMUError) -> VirtRange in
            let start: VirtAddr
            if let address {
                start = address
            } else {
                guard let aligned = alignUp(state.nextAddress, to: .size2M) else {
                    throw IOMMUError(.outOfMemory, length: length)
                }
                start = VirtAddr(aligned)
            }
            let range = try VirtRange.checked(start: start, length: length, alignment: alignment)
            if state.regions.contains(where: { $0.range.overlaps(range) }) {
                throw IOMMUError(.alreadyMapped, address: start.rawValue, length: length)
            }
            let region = Region(range: range, backing: backing, writable: writable)
            let index = state.regions.firstIndex { $0.range.first > range.first } ?? state.regions.count
            state.regions.insert(region, at: index)
            if address == nil { state.nextAddress = range.last.rawValue &+ 1 }
            return range
        }
    }

    /// Unmaps every page of `range` (Linux: `munmap`); regions are cut as needed. Frames no longer
    /// mapped and not pinned are freed; pinned ones live on until unpinned.
    ///
    /// - Throws: `unaligned` (EINVAL) for a range not page aligned (2 MiB inside huge-page regions).
    public func unmap(_ range: VirtRange) throws(IOMMUError) {
        try state.withLock { (state) throws(IOMMUError) in
            guard range.first.isAligned(to: Self.pageSize), range.length & Self.pageSize.mask == 0 else {
                throw IOMMUError(.unaligned, address: range.first.rawValue, length: range.length)
            }
            for region in state.regions where region.range.overlaps(range) && region.backing == .hugePages2M {
                let cut = region.range.intersection(range)!
                guard cut.first.isAligned(to: .size2M), cut.length & PageSize.size2M.mask == 0 else {
                    throw IOMMUError(.unaligned, address: range.first.rawValue, length: range.length)
                }
            }
            var kept: [Region] = []
            for region in state.regions {
                guard let cut = region.range.intersection(range) else {
                    kept.append(region)
                    continue
                }
                releaseBacking(of: region, in: cut, state: &state)
                if let below = VirtRange(first: region.range.first, last: VirtAddr(cut.first.rawValue &- 1)), cut.first > region.range.first {
                    kept.append(Region(range: below, backing: shifted(region.backing, by: 0), writable: region.writable))
                }
                if cut.last < region.range.last, let above = VirtRange(first: VirtAddr(cut.last.rawValue &+ 1), last: region.range.last) {
                    let delta = above.first.rawValue - region.range.first.rawValue
                    kept.append(Region(range: above, backing: shifted(region.backing, by: delta), writable: region.writable))
                }
            }
            state.regions = kept.sorted { $0.range.first < $1.range.first }
        }
    }

    /// The regions, in address order.
    public var regions: [Region] { state.withLock { $0.regions } }

    /// The region containing `address`, if any.
    public func region(containing address: VirtAddr) -> Region? {
        state.withLock { state in state.regions.first { $0.range.contains(address) } }
    }

    // MARK: - Translation (page faults)

    /// The physical address behind `address`, backing the page first if needed (a page fault).
    ///
    /// - Throws: `badAddress` (EFAULT) if nothing is mapped there, or if `forWrite` and the
    ///   region is read-only; `outOfMemory` (ENOMEM) if no frame is left.
    public func translate(_ address: VirtAddr, forWrite: Bool = false) throws(IOMMUError) -> PhysAddr {
        try state.withLock { (state) throws(IOMMUError) -> PhysAddr in
            try translateLocked(address, forWrite: forWrite, state: &state)
        }
    }

    // MARK: - Pinning

    /// Pins `count` consecutive 4 KiB pages from `address` and returns their physical addresses
    /// (Linux: `pin_user_pages_remote(FOLL_LONGTERM)`). All or nothing.
    ///
    /// - Throws: `badAddress` (EFAULT) for unmapped memory, device (PFNMAP) memory, or a write
    ///   pin of read-only memory; `unaligned` for an address that is not page aligned.
    public func pin(_ address: VirtAddr, count: Int, write: Bool) throws(IOMMUError) -> [PhysAddr] {
        guard address.isAligned(to: Self.pageSize) else {
            throw IOMMUError(.unaligned, address: address.rawValue, length: UInt64(count) << 12)
        }
        guard count > 0, UInt64(count) <= (UInt64.max - address.rawValue) >> 12 else {
            throw IOMMUError(.invalidArgument, address: address.rawValue, length: UInt64(count))
        }
        if pinFailNth.shouldFail() { throw IOMMUError(.badAddress, address: address.rawValue, length: UInt64(count) << 12) }
        return try state.withLock { (state) throws(IOMMUError) -> [PhysAddr] in
            var pinned: [PhysAddr] = []
            pinned.reserveCapacity(count)
            for index in 0..<count {
                let va = VirtAddr(address.rawValue + UInt64(index) << 12)
                let physical: PhysAddr
                do throws(IOMMUError) {
                    guard let region = state.regions.first(where: { $0.range.contains(va) }) else {
                        throw IOMMUError(.badAddress, address: va.rawValue, length: 4096)
                    }
                    if case .device = region.backing { throw IOMMUError(.badAddress, address: va.rawValue, length: 4096) }
                    physical = try translateLocked(va, forWrite: write, state: &state)
                } catch {
                    for page in pinned { unpinLocked(page, state: &state) }
                    throw error
                }
                state.pagePins[physical.rawValue, default: 0] += 1
                let frame = frameAddress(of: physical, state: state)
                state.frames[frame]!.pins += 1
                pinned.append(physical)
            }
            return pinned
        }
    }

    /// Pins the longest run of physically contiguous 4 KiB pages starting at `address`, at most
    /// `maxCount` pages, all in the same (non-device) region, and returns the first page's physical
    /// address and the run length (Linux: the batch of `vfio_pin_pages_remote()`, which stops at
    /// the first page that does not continue the run). The first page must pin, later pages that
    /// cannot be pinned (or are not contiguous) end the run without an error.
    ///
    /// - Throws: as `pin` for the first page (EFAULT for unmapped, device or read-only memory).
    public func pinContiguous(_ address: VirtAddr, maxCount: Int, write: Bool) throws(IOMMUError) -> (first: PhysAddr, count: Int) {
        guard address.isAligned(to: Self.pageSize) else {
            throw IOMMUError(.unaligned, address: address.rawValue, length: UInt64(maxCount) << 12)
        }
        guard maxCount > 0, UInt64(maxCount) <= (UInt64.max - address.rawValue) >> 12 else {
            throw IOMMUError(.invalidArgument, address: address.rawValue, length: UInt64(maxCount))
        }
        if pinFailNth.shouldFail() { throw IOMMUError(.badAddress, address: address.rawValue, length: 4096) }
        return try state.withLock { (state) throws(IOMMUError) -> (first: PhysAddr, count: Int) in
            guard let region = state.regions.first(where: { $0.range.contains(address) }) else {
                throw IOMMUError(.badAddress, address: address.rawValue, length: 4096)
            }
            if case .device = region.backing { throw IOMMUError(.badAddress, address: address.rawValue, length: 4096) }
            let first = try translateLocked(address, forWrite: write, state: &state)
            var count = 0
            while count < maxCount {
                let va = VirtAddr(address.rawValue + UInt64(count) << 12)
                guard region.range.contains(va) else { break }
                let physical: PhysAddr
                do throws(IOMMUError) {
                    physical = try translateLocked(va, forWrite: write, state: &state)
                } catch {
                    break
                }
                guard physical.rawValue == first.rawValue + UInt64(count) << 12 else { break }
                state.pagePins[physical.rawValue, default: 0] += 1
                let frame = frameAddress(of: physical, state: state)
                state.frames[frame]!.pins += 1
                count += 1
            }
            return (first, count)
        }
    }

    /// Drops one pin from each of `count` consecutive 4 KiB physical pages from `first`
    /// (the counterpart of `pinContiguous`).
    public func unpin(first: PhysAddr, count: Int) {
        state.withLock { state in
            for index in 0..<count { unpinLocked(PhysAddr(first.rawValue + UInt64(index) << 12), state: &state) }
        }
    }

    /// Drops one pin from each page (Linux: `unpin_user_page`). Unpinning a page that is not
    /// pinned is a bug inside IOMMUKit and stops the process.
    public func unpin(_ pages: [PhysAddr]) {
        state.withLock { state in
            for page in pages { unpinLocked(page, state: &state) }
        }
    }

    /// The pin count of the 4 KiB physical page at `page`.
    public func pinCount(_ page: PhysAddr) -> Int {
        state.withLock { $0.pagePins[page.alignedDown(to: Self.pageSize).rawValue] ?? 0 }
    }

    /// The total of all pin counts.
    public var totalPins: Int { state.withLock { $0.pagePins.values.reduce(0, +) } }

    /// The physical address of a device (PFNMAP) page, without pinning (Linux: `follow_fault_pfn`).
    ///
    /// - Throws: `badAddress` (EFAULT) unless `address` is in a device region (and, for `write`,
    ///   a writable one).
    public func followPFNMap(_ address: VirtAddr, write: Bool) throws(IOMMUError) -> PhysAddr {
        try state.withLock { (state) throws(IOMMUError) -> PhysAddr in
            guard let region = state.regions.first(where: { $0.range.contains(address) }),
                  case .device(let base) = region.backing, !write || region.writable
            else { throw IOMMUError(.badAddress, address: address.rawValue) }
            return PhysAddr(base.rawValue + (address.rawValue - region.range.first.rawValue))
        }
    }

    // MARK: - Locked-memory accounting

    /// Pages accounted as locked (Linux: `mm->locked_vm`).
    public var lockedPages: UInt64 { state.withLock { $0.lockedPages } }

    /// Adds `pages` to the locked count (Linux: `vfio_lock_acct(dma, npage, true)` →
    /// `account_locked_vm`). Without `CAP_IPC_LOCK`, going over `RLIMIT_MEMLOCK` fails with
    /// ENOMEM and changes nothing.
    public func accountLocked(pages: UInt64) throws(IOMMUError) {
        try state.withLock { (state) throws(IOMMUError) in
            let (total, overflow) = state.lockedPages.addingReportingOverflow(pages)
            if !hasIPCLock, overflow || total > lockedMemoryLimit >> 12 {
                throw IOMMUError(.lockedMemoryLimit, length: pages << 12)
            }
            state.lockedPages = total
        }
    }

    /// Removes `pages` from the locked count. Removing more than is counted is a bug and stops
    /// the process.
    public func unaccountLocked(pages: UInt64) {
        state.withLock { state in
            precondition(pages <= state.lockedPages, "locked-memory accounting went negative")
            state.lockedPages -= pages
        }
    }

    // MARK: - Byte access (what the process itself reads and writes)

    /// Writes bytes into the process's memory (faulting pages in).
    public func write(_ address: VirtAddr, _ bytes: [UInt8]) throws(IOMMUError) {
        var done = 0
        while done < bytes.count {
            let va = VirtAddr(address.rawValue + UInt64(done))
            let chunk = min(bytes.count - done, Int(4096 - va.offset(in: Self.pageSize)))
            let pa = try translate(va, forWrite: true)
            let slice = Array(bytes[done..<(done + chunk)])
            try memory.writeBytes(pa, slice)
            done += chunk
        }
    }

    /// Reads bytes from the process's memory (faulting pages in).
    public func read(_ address: VirtAddr, count: Int) throws(IOMMUError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let va = VirtAddr(address.rawValue + UInt64(out.count))
            let chunk = min(count - out.count, Int(4096 - va.offset(in: Self.pageSize)))
            let pa = try translate(va, forWrite: false)
            out += try memory.readBytes(pa, count: chunk)
        }
        return out
    }

    /// Frames currently held by this process (mapped, or unmapped but still pinned).
    public var framesHeld: Int { state.withLock { $0.frames.count } }

    // MARK: - Internals

    private func translateLocked(_ address: VirtAddr, forWrite: Bool, state: inout State) throws(IOMMUError) -> PhysAddr {
        guard let region = state.regions.first(where: { $0.range.contains(address) }) else {
            throw IOMMUError(.badAddress, address: address.rawValue)
        }
        if forWrite, !region.writable { throw IOMMUError(.badAddress, address: address.rawValue) }
        switch region.backing {
        case .device(let base):
            return PhysAddr(base.rawValue + (address.rawValue - region.range.first.rawValue))
        case .anonymous:
            let page = address.rawValue >> 12
            if let frame = state.pages[page] { return PhysAddr(frame | address.offset(in: Self.pageSize)) }
            let frame = try frames.allocate(Self.pageSize)
            state.pages[page] = frame.rawValue
            state.frames[frame.rawValue] = FrameRecord(size: Self.pageSize, mapped: true, pins: 0)
            return PhysAddr(frame.rawValue | address.offset(in: Self.pageSize))
        case .hugePages2M:
            let huge = address.rawValue >> 21
            if let frame = state.hugePages[huge] { return PhysAddr(frame | address.offset(in: .size2M)) }
            let frame = try frames.allocate(.size2M)
            state.hugePages[huge] = frame.rawValue
            state.frames[frame.rawValue] = FrameRecord(size: .size2M, mapped: true, pins: 0)
            return PhysAddr(frame.rawValue | address.offset(in: .size2M))
        }
    }

    /// The frame record key for a 4 KiB physical page (its 4 KiB or 2 MiB frame).
    private func frameAddress(of page: PhysAddr, state: State) -> UInt64 {
        let small = page.alignedDown(to: Self.pageSize).rawValue
        if state.frames[small] != nil { return small }
        return page.alignedDown(to: .size2M).rawValue
    }

    private func unpinLocked(_ page: PhysAddr, state: inout State) {
        let key = page.alignedDown(to: Self.pageSize).rawValue
        guard let count = state.pagePins[key], count > 0 else {
            preconditionFailure("unpin of a page that is not pinned: \(page)")
        }
        state.pagePins[key] = count == 1 ? nil : count - 1
        let frame = frameAddress(of: page, state: state)
        state.frames[frame]!.pins -= 1
        releaseIfUnused(frame, state: &state)
    }

    private func releaseIfUnused(_ frame: UInt64, state: inout State) {
        guard let record = state.frames[frame], !record.mapped, record.pins == 0 else { return }
        state.frames[frame] = nil
        frames.free(PhysAddr(frame), record.size)
    }

    private func releaseBacking(of region: Region, in cut: VirtRange, state: inout State) {
        switch region.backing {
        case .device: return
        case .anonymous:
            var page = cut.first.rawValue >> 12
            let last = cut.last.rawValue >> 12
            while page <= last {
                if let frame = state.pages.removeValue(forKey: page) {
                    state.frames[frame]!.mapped = false
                    releaseIfUnused(frame, state: &state)
                }
                page += 1
            }
        case .hugePages2M:
            var huge = cut.first.rawValue >> 21
            let last = cut.last.rawValue >> 21
            while huge <= last {
                if let frame = state.hugePages.removeValue(forKey: huge) {
                    state.frames[frame]!.mapped = false
                    releaseIfUnused(frame, state: &state)
                }
                huge += 1
            }
        }
    }

    private func shifted(_ backing: Backing, by delta: UInt64) -> Backing {
        if case .device(let base) = backing { return .device(PhysAddr(base.rawValue + delta)) }
        return backing
    }
}
