import IOMMUBase

/// What one device can reach in physical memory right now, and why: the isolation audit of
/// `iommu inspect --reach DEVICE` (issue #8, the question of the page-size seed thread — "the
/// IOMMU page is the unit of isolation").
///
/// Computed from what the hardware would use, not from software bookkeeping: the device's
/// stream IDs are followed through the SMMU's SMR/S2CR registers to a context bank whose
/// TTBR/TCR configure a `HardwareWalker` (DART: the stream's TCR/TTBRs), and the walker's leaves
/// are what the device reaches; the model TLB adds entries that still translate after software
/// removed the mapping. Software records (DMA-API debug entries, `map` steps, VFIO mappings) only
/// name the owner of each range and tell which bytes of a leaf lie beyond the buffer the driver
/// asked for. Linux has no such report; it is what a reviewer of a mapping policy asks.
public struct DeviceReach: Sendable {
    /// Why a physical range is reachable.
    public enum Reason: String, Sendable, CaseIterable {
        /// A leaf of the page table the hardware walks, inside a buffer (or with no buffer record).
        case mapping
        /// The part of a mapped leaf outside the buffer the driver asked for: a 1 KiB buffer in a
        /// 16 KiB DART page exposes the other 15 KiB; a 4 KiB buffer on a 64 KiB granule, 60 KiB.
        case granuleRounding = "granule-rounding"
        /// A model TLB entry of the device's context translating to a page the table no longer
        /// maps there; reachable until the invalidation completes.
        case staleTLB = "stale-tlb"
        /// No translation: S2CR bypass, identity domain (DART TCR bypass), an unmatched stream
        /// with USFCFG=0, a disabled context bank, no IOMMU, a virtio-iommu bypass.
        case bypass
    }

    /// One physical range and why the device reaches it.
    public struct Entry: Sendable, Equatable {
        /// Physical range, inclusive.
        public var first: UInt64
        public var last: UInt64
        public var reason: Reason
        /// The IOVA that reaches `first` (nil for bypass).
        public var iova: UInt64?
        /// "domain#3 (DMA-FQ)" — the domain whose table holds the leaf (nil for bypass / stale).
        public var domain: String?
        /// The leaf (or TLB entry) size in bytes.
        public var granule: UInt64?
        /// "rw", "r", "w" (nil for bypass: whatever the bus allows).
        public var prot: String?
        /// The buffer the range belongs to (or lies beyond): "nic0 dma-map-page $tx 0x… size 1024".
        public var owner: String?
        /// How the transaction gets there: "smmu0 sid 0x100 → SMR0 → S2CR translate cb 0".
        public var via: String
        /// A sentence for the reader.
        public var detail: String

        /// Bytes in the range (nil when it is the whole 64-bit space).
        public var length: UInt64? { last &- first == .max ? nil : last &- first &+ 1 }
    }

    public var device: String
    /// Steps run when the audit was taken.
    public var step: Int
    /// Per stream (or endpoint): what the hardware does with its transactions.
    public var routes: [String]
    /// Sorted by physical address.
    public var entries: [Entry]

    /// Bytes per reason (bypass: nil when the whole 64-bit space).
    public func bytes(_ reason: Reason) -> UInt64? {
        var total: UInt64 = 0
        for e in entries where e.reason == reason {
            guard let n = e.length else { return nil }
            total &+= n
        }
        return total
    }

    /// Bytes reachable only because leaves are larger than the buffers mapped into them.
    public var beyondBufferBytes: UInt64 { bytes(.granuleRounding) ?? 0 }
}
