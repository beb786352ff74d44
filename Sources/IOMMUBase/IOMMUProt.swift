/// Access permissions and attributes of a mapping.
///
/// Bit values are Linux's `IOMMU_*` flags from `include/linux/iommu.h`, so a prot word read from a
/// trace or a ported test means the same thing here.
@frozen
public struct IOMMUProt: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Reads allowed. The corresponding Linux constant is `IOMMU_READ`.
    public static let read = IOMMUProt(rawValue: 1 << 0)
    /// Writes allowed. The corresponding Linux constant is `IOMMU_WRITE`.
    public static let write = IOMMUProt(rawValue: 1 << 1)
    /// Cache-coherent (write-back) memory. The corresponding Linux constant is `IOMMU_CACHE`.
    public static let cache = IOMMUProt(rawValue: 1 << 2)
    /// Instruction fetches forbidden. The corresponding Linux constant is `IOMMU_NOEXEC`.
    public static let noExec = IOMMUProt(rawValue: 1 << 3)
    /// Device (MMIO) memory. The corresponding Linux constant is `IOMMU_MMIO`.
    public static let mmio = IOMMUProt(rawValue: 1 << 4)
    /// Privileged accesses only. The corresponding Linux constant is `IOMMU_PRIV`.
    public static let priv = IOMMUProt(rawValue: 1 << 5)

    /// Parses the letters `r w c n m p` (read, write, cache, noexec, mmio, priv), as the
    /// `iommu pgtable` ops files write them; `nil` on any other character or an empty string.
    public init?(letters: some StringProtocol) {
        var prot = IOMMUProt()
        guard !letters.isEmpty else { return nil }
        for ch in letters {
            switch ch {
            case "r": prot.insert(.read)
            case "w": prot.insert(.write)
            case "c": prot.insert(.cache)
            case "n": prot.insert(.noExec)
            case "m": prot.insert(.mmio)
            case "p": prot.insert(.priv)
            case "-": continue
            default: return nil
            }
        }
        self = prot
    }

    /// The letters form, e.g. "rwc"; "-" for none.
    public var letters: String {
        var s = ""
        if contains(.read) { s += "r" }
        if contains(.write) { s += "w" }
        if contains(.cache) { s += "c" }
        if contains(.noExec) { s += "n" }
        if contains(.mmio) { s += "m" }
        if contains(.priv) { s += "p" }
        return s.isEmpty ? "-" : s
    }

    public var description: String { letters }
}
