import IOMMUBase
import IOMMUCore

/// A scenario file: a platform (IOMMUs, buses, devices) and a workload of steps.
///
/// The schema is documented in `docs/scenarios.md`; `Scenario.parse(_:)` checks every key,
/// type and range and reports problems as `ScenarioInputError` with the line.
public struct Scenario: Sendable {
    public var name: String
    public var description: String
    public var platform: Platform
    public var steps: [Step]

    public struct Platform: Sendable {
        public var cpuPageSize: PageSize = .size4K
        public var defaultDomain: DefaultDomainPolicy = .strict
        public var ramBytes: UInt64 = 1 << 30
        public var iommus: [IOMMUSpec] = []
        public var devices: [DeviceSpec] = []
        public var allowUnsafeInterrupts = false
        public var lockedMemoryLimit: UInt64 = 64 << 20
        /// A virtio-iommu device (`virtio-iommu:`), with platform devices as its endpoints.
        public var virtio: VirtioSpec?
    }

    public enum DefaultDomainPolicy: String, Sendable, CaseIterable {
        case strict, lazy, identity
        var domainType: IOMMUDomainType {
            switch self {
            case .strict: .dma
            case .lazy: .dmaFQ
            case .identity: .identity
            }
        }
    }

    public enum IOMMUKind: String, Sendable, CaseIterable {
        case smmu, dart
    }

    public enum UnmatchedStreamPolicy: String, Sendable, CaseIterable {
        case fault, bypass
    }

    public struct IOMMUSpec: Sendable {
        public var name: String
        public var kind: IOMMUKind
        public var pageSizes: PageSizeBitmap
        public var streamMatchRegisters: Int
        public var contextBanks: Int
        public var unmatchedStream: UnmatchedStreamPolicy
        public var tlbEntries: Int
        public var registerAtBoot: Bool
        public var interruptRemapping: Bool
        public var line: Int
    }

    public struct DeviceSpec: Sendable {
        public var name: String
        public var bus: String
        public var iommu: String?
        public var streamIDs: [UInt32]
        public var pciAddress: PCIAddress?
        public var dmaAliases: [PCIAddress]
        public var acsIsolated: Bool
        public var untrusted: Bool
        public var dmaMaskBits: Int
        public var reservedRegions: [ReservedRegion]
        public var presentAtBoot: Bool
        public var driver: String?
        public var line: Int
    }

    /// One workload step: an action, what it should produce, and where it was written.
    public struct Step: Sendable {
        var action: Action
        public var expect: [Expectation]
        public var note: String?
        public var line: Int
    }

    /// A number in a step: literal, or a name bound by an earlier step (`iova-alloc … as: buf`).
    public enum Value: Sendable, CustomStringConvertible {
        case literal(UInt64)
        case name(String, plus: UInt64)
        public var description: String {
            switch self {
            case .literal(let v): "0x" + String(v, radix: 16)
            case .name(let n, let plus): plus == 0 ? "$" + n : "$\(n)+0x\(String(plus, radix: 16))"
            }
        }
    }

    public enum DomainRef: Sendable {
        case current, `default`, named(String)
    }

    public enum VFIOUnmapBehaviour: String, Sendable, CaseIterable {
        /// The driver unpins what the notification covers (cooperative).
        case unpin
        /// The driver ignores notifications and keeps its pins (misbehaving).
        case ignore
    }

    enum Action: Sendable {
        case registerIOMMU(String)
        case addDevice(String)
        case removeDevice(String)
        case bind(device: String, driver: String, driverManagedDMA: Bool)
        case unbind(String)
        case retryDeferredProbes
        case allocateDomain(device: String, type: IOMMUDomainType, name: String)
        case attach(device: String, domain: String)
        case detach(device: String, domain: String)
        case freeDomain(String)
        case map(device: String, domain: DomainRef, iova: Value, length: UInt64, paddr: UInt64?, prot: IOMMUProt)
        case unmap(device: String, domain: DomainRef, iova: Value, length: UInt64)
        case iovaAlloc(device: String, length: UInt64, name: String?)
        case iovaFree(device: String, iova: Value, length: UInt64)
        case dmaWrite(device: String, iova: Value, bytes: [UInt8])
        case dmaRead(device: String, iova: Value, length: Int)
        case streamDMA(iommu: String, streamID: UInt32, iova: UInt64, isWrite: Bool)
        case translate(device: String, iova: Value)
        case vfioOpenGroup(device: String)
        case vfioSetContainer(device: String)
        case vfioUnsetContainer(device: String)
        case vfioSetIOMMU
        case vfioMap(iova: UInt64, length: UInt64, vaddr: UInt64?, read: Bool, write: Bool)
        case vfioUnmap(iova: UInt64, length: UInt64)
        case vfioInfo
        case vfioRegisterDriver(name: String, onUnmap: VFIOUnmapBehaviour)
        case vfioPin(driver: String, iova: UInt64, count: Int)
        case vfioUnpin(driver: String, iova: UInt64, count: Int)
        /// A step of a layer that brought its own file (`ScenarioLayerStep`).
        case layer(any ScenarioLayerStep)
        case check
    }

    /// What a step must produce. Inline `expect:` on an action, or a standalone `expect` step.
    public enum Expectation: Sendable {
        /// The action failed with this errno (`ok` = succeeded).
        case errno(Errno?)
        /// Bytes mapped/unmapped/returned by the action.
        case bytes(UInt64)
        /// The data a DMA read returned.
        case data([UInt8])
        /// The action reported a warning of this kind (`IOMMUWarning` case name).
        case warning(String)
        /// The action raised no warning.
        case noWarnings
        /// The action caused `count` IOMMU faults (at least one when `nil`).
        case faults(Int?)
        /// The IOVA a named value (or the action's result) has.
        case iova(UInt64)
        /// A device's IOMMU group number.
        case group(device: String, id: Int)
        /// Devices sharing one group.
        case sameGroup([String])
        case probeState(device: String, state: String)
        case dmaPath(device: String, path: String)
        case translation(device: String, iova: Value, paddr: UInt64?)
        case domainType(device: String, type: String)
        case groupCount(Int)
        case validIOVARanges([(UInt64, UInt64)])
        case pinnedPages(driver: String, count: Int)
        case vfioMappings(Int)
        /// DMA-API state (`dma:` — mapping error, live mappings, stale windows, flush queue).
        case dma(DMAExpectation)
        /// A check a layer brought in its own file (`ScenarioLayerExpectation`).
        case layer(LayerExpectation)
    }

    /// A layer expectation, boxed (the protocol is internal).
    public struct LayerExpectation: Sendable {
        let base: any ScenarioLayerExpectation
    }
}
