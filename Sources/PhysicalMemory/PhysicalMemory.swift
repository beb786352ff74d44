#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import IOMMUBase
import Synchronization

/// The machine's physical address space: sparse, page-granular, backed on first touch.
///
/// Two parts:
/// - **RAM**, a dense window (`ram`) where the frame allocator hands out page-table pages and
///   buffers. It is one anonymous, lazily-committed host mapping, so the operating system backs a
///   page only when it is first written and a physical address inside RAM turns into a host
///   pointer with one comparison and one addition: the page-table walk, the hottest path of the
///   model, never takes a lock.
/// - **Everything else** up to `2^addressBits` (device memory, far addresses): 4 KiB pages
///   created on first write and kept in a locked dictionary. Reading a page never written gives
///   zeros, as the model of a bus that returns zeros for nothing there.
///
/// Descriptors (8-byte aligned 64-bit words) can be loaded and stored atomically, so a modelled
/// hardware walker may read tables while software updates them (Linux's `READ_ONCE`/`WRITE_ONCE`
/// on PTEs and its `cmpxchg64` table installs).
public final class PhysicalMemory: @unchecked Sendable {
    // @unchecked: `ramHost` is an immutable pointer to memory whose concurrent access is governed
    // by the atomic/byte access rules documented above; the sparse part sits behind a Mutex.

    /// Width of a physical address; accesses at or above `2^addressBits` fail with ERANGE.
    public let addressBits: Int
    /// The dense RAM window.
    public let ram: PhysRange

    @usableFromInline let ramFirst: UInt64
    @usableFromInline let ramLength: UInt64
    @usableFromInline let ramHost: UnsafeMutableRawPointer
    private let sparse = IOMMUMutex<[UInt64: UnsafeMutableRawPointer]>([:])

    /// The page size of the sparse part (and of the host's own backing).
    public static let pageSize = PageSize.size4K

    /// Creates an empty physical address space.
    ///
    /// - Parameters:
    ///   - addressBits: 32...56; the default 48 is 256 TiB, far more than real memory.
    ///   - ramBase: where RAM starts; 2 MiB aligned. The default, 2 GiB, is where many Arm
    ///     platforms put DRAM.
    ///   - ramSize: how much RAM; 2 MiB multiple. Only what is touched costs host memory.
    public init(addressBits: Int = 48, ramBase: PhysAddr = PhysAddr(0x8000_0000), ramSize: UInt64 = 4 << 30) throws(IOMMUError) {
        guard (32...56).contains(addressBits) else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(addressBits))
        }
        guard ramBase.isAligned(to: .size2M), ramSize != 0, ramSize & PageSize.size2M.mask == 0,
              let ram = PhysRange(start: ramBase, length: ramSize),
              ram.last.rawValue >> UInt64(addressBits) == 0
        else {
            throw IOMMUError(.invalidConfiguration, address: ramBase.rawValue, length: ramSize)
        }
        let host = mmap(nil, Int(ramSize), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let host, host != MAP_FAILED else {
            throw IOMMUError(.outOfMemory, address: ramBase.rawValue, length: ramSize)
        }
        self.addressBits = addressBits
        self.ram = ram
        self.ramFirst = ramBase.rawValue
        self.ramLength = ramSize
        self.ramHost = host
    }

    deinit {
        munmap(ramHost, Int(ramLength))
        sparse.withLock { pages in
            for page in pages.values { page.deallocate() }
        }
    }

    // MARK: - Descriptor access (atomic 64-bit words)

    /// A host pointer to the 64-bit word at `address` if it lies in RAM, else `nil`.
    ///
    /// `address` must be 8-byte aligned. The pointer stays valid for the life of this object.
    @inlinable
    public func wordPointer(_ address: PhysAddr) -> UnsafeMutablePointer<Atomic<UInt64>>? {
        let offset = address.rawValue &- ramFirst
        guard offset < ramLength else { return nil }
        precondition(offset & 7 == 0, "descriptor address must be 8-byte aligned")
        return (ramHost + Int(offset)).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// Loads the little-endian 64-bit word at `address` with acquire ordering.
    ///
    /// Works anywhere in the address space; a word never written reads as 0.
    @inlinable
    public func load64(_ address: PhysAddr) throws(IOMMUError) -> UInt64 {
        if let word = wordPointer(address) {
            return UInt64(littleEndian: word.pointee.load(ordering: .acquiring))
        }
        return try loadSparse64(address)
    }

    /// Stores a little-endian 64-bit word at `address` with release ordering.
    @inlinable
    public func store64(_ address: PhysAddr, _ value: UInt64) throws(IOMMUError) {
        if let word = wordPointer(address) {
            word.pointee.store(value.littleEndian, ordering: .releasing)
            return
        }
        try storeSparse64(address, value)
    }

    @usableFromInline
    func loadSparse64(_ address: PhysAddr) throws(IOMMUError) -> UInt64 {
        guard address.rawValue & 7 == 0 else { throw IOMMUError(.unaligned, address: address.rawValue, length: 8) }
        var value: UInt64 = 0
        try withUnsafeMutableBytes(of: &value) { (bytes) throws(IOMMUError) in
            try read(address, into: bytes)
        }
        return UInt64(littleEndian: value)
    }

    @usableFromInline
    func storeSparse64(_ address: PhysAddr, _ value: UInt64) throws(IOMMUError) {
        guard address.rawValue & 7 == 0 else { throw IOMMUError(.unaligned, address: address.rawValue, length: 8) }
        var little = value.littleEndian
        try withUnsafeBytes(of: &little) { (bytes) throws(IOMMUError) in
            try write(address, from: bytes)
        }
    }

    // MARK: - Byte access

    /// Copies `buffer.count` bytes starting at `address` into `buffer`.
    ///
    /// Fails with ERANGE (nothing copied) if the range leaves the address space.
    public func read(_ address: PhysAddr, into buffer: UnsafeMutableRawBufferPointer) throws(IOMMUError) {
        guard !buffer.isEmpty else { return }
        try checkRange(address, UInt64(buffer.count))
        var done = 0
        while done < buffer.count {
            let pa = address.rawValue &+ UInt64(done)
            let chunk = chunkLength(at: pa, remaining: buffer.count - done)
            let destination = buffer.baseAddress! + done
            if let host = hostPointer(pa, creating: false) {
                destination.copyMemory(from: host, byteCount: chunk)
            } else {
                destination.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
            }
            done += chunk
        }
    }

    /// Copies `bytes` into memory starting at `address`, backing pages as they are first written.
    public func write(_ address: PhysAddr, from bytes: UnsafeRawBufferPointer) throws(IOMMUError) {
        guard !bytes.isEmpty else { return }
        try checkRange(address, UInt64(bytes.count))
        var done = 0
        while done < bytes.count {
            let pa = address.rawValue &+ UInt64(done)
            let chunk = chunkLength(at: pa, remaining: bytes.count - done)
            hostPointer(pa, creating: true)!.copyMemory(from: bytes.baseAddress! + done, byteCount: chunk)
            done += chunk
        }
    }

    /// Sets `length` bytes starting at `address` to `value`.
    public func fill(_ address: PhysAddr, length: UInt64, with value: UInt8) throws(IOMMUError) {
        guard length != 0 else { return }
        try checkRange(address, length)
        var done: UInt64 = 0
        while done < length {
            let pa = address.rawValue &+ done
            let chunk = chunkLength(at: pa, remaining: Int(min(length - done, 1 << 30)))
            if value == 0, !ram.contains(PhysAddr(pa)), hostPointer(pa, creating: false) == nil {
                done += UInt64(chunk)  // an untouched sparse page already reads as zero
                continue
            }
            hostPointer(pa, creating: true)!.initializeMemory(as: UInt8.self, repeating: value, count: chunk)
            done += UInt64(chunk)
        }
    }

    /// Reads `count` bytes into a new array (convenient for tests and tools; not for hot paths).
    public func readBytes(_ address: PhysAddr, count: Int) throws(IOMMUError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let result = out.withUnsafeMutableBytes { buffer in
            Result { () throws(IOMMUError) in try read(address, into: buffer) }
        }
        try result.get()
        return out
    }

    /// Writes an array of bytes (convenient for tests and tools).
    public func writeBytes(_ address: PhysAddr, _ bytes: [UInt8]) throws(IOMMUError) {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(IOMMUError) in try write(address, from: buffer) }
        }
        try result.get()
    }

    /// Pages of the sparse (non-RAM) part that have been written and so hold host memory.
    public var sparsePagesBacked: Int { sparse.withLock { $0.count } }

    // MARK: - Internals

    private func checkRange(_ address: PhysAddr, _ length: UInt64) throws(IOMMUError) {
        let (last, overflow) = address.rawValue.addingReportingOverflow(length - 1)
        guard !overflow, last >> UInt64(addressBits) == 0 else {
            throw IOMMUError(.addressOutOfRange, address: address.rawValue, length: length)
        }
    }

    /// How many bytes from `pa` stay inside one backing unit (all of RAM, or one sparse page).
    private func chunkLength(at pa: UInt64, remaining: Int) -> Int {
        let offset = pa &- ramFirst
        if offset < ramLength { return Int(min(UInt64(remaining), ramLength - offset)) }
        let inPage = Int(pa & Self.pageSize.mask)
        var chunk = min(remaining, Int(Self.pageSize.bytes) - inPage)
        // Do not run from a sparse page into RAM.
        if pa < ramFirst { chunk = Int(min(UInt64(chunk), ramFirst - pa)) }
        return chunk
    }

    private func hostPointer(_ pa: UInt64, creating: Bool) -> UnsafeMutableRawPointer? {
        let offset = pa &- ramFirst
        if offset < ramLength { return ramHost + Int(offset) }
        let pageNumber = pa >> UInt64(Self.pageSize.shift)
        let inPage = Int(pa & Self.pageSize.mask)
        return sparse.withLock { pages -> UnsafeMutableRawPointer? in
            if let page = pages[pageNumber] { return page + inPage }
            guard creating else { return nil }
            let page = UnsafeMutableRawPointer.allocate(byteCount: Int(Self.pageSize.bytes), alignment: 4096)
            page.initializeMemory(as: UInt8.self, repeating: 0, count: Int(Self.pageSize.bytes))
            pages[pageNumber] = page
            return page + inPage
        }
    }
}
