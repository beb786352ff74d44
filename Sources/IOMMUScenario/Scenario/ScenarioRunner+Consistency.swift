import DMAMapping
import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOPageTable
import IOVAAllocator

/// One consistency checker run over a scenario platform: its name and what it found.
public struct ScenarioConsistencyCheck: Sendable {
    /// What was checked: "core", "arm-smmu smmu0", "page-table domain#3", "dma-cookie domain#3", ….
    public var checker: String
    /// `[]`: consistent.
    public var violations: [ConsistencyViolation]
}

extension ScenarioRunner {
    /// Every live domain the platform holds (groups' current, default and blocking domains,
    /// domains a workload allocated by name, VFIO's and the DMA layer's), by serial.
    func liveDomains() -> [IOMMUDomain] {
        var domains: [UInt64: IOMMUDomain] = [:]
        func add(_ d: IOMMUDomain?) { if let d, !d.isFreed { domains[d.serial] = d } }
        for gid in core.groupIDs {
            guard let info = core.groupInfo(id: gid) else { continue }
            add(info.domain)
            add(info.defaultDomain)
            add(info.blockingDomain)
        }
        for d in namedDomains.values { add(d) }
        for d in container?.domains ?? [] { add(d) }
        for d in dmaLayer.devices.values { add(d.cookie?.domain) }
        return domains.keys.sorted().map { domains[$0]! }
    }

    /// The DMA layer's cookies (one per DMA-API domain), in domain order.
    func dmaCookies() -> [DMACookie] {
        var seen = Set<ObjectIdentifier>()
        return dmaLayer.devices.values.compactMap(\.cookie).filter { seen.insert(ObjectIdentifier($0)).inserted }
            .sorted { $0.domain.serial < $1.domain.serial }
    }

    /// Runs every consistency checker that applies to the platform (docs/reliability.md):
    /// the core's links and counts; each SMMU driver's stream map against its registers; each
    /// DART driver's stream registers against the attached domains; every live domain's page
    /// table against the hardware walker; every IOVA domain (`iova-alloc`'s and each DMA
    /// cookie's) and each cookie's live DMA mappings against allocator and table; the VFIO
    /// container; the virtio-iommu device. What `iommu inspect --check` prints.
    public func consistencyChecks() -> [ScenarioConsistencyCheck] {
        var checks = [ScenarioConsistencyCheck(checker: "core", violations: core.checkConsistency())]
        for spec in scenario.platform.iommus {
            switch hardware[spec.name] {
            case .smmu(_, let driver)?: checks.append(.init(checker: "arm-smmu \(spec.name)", violations: driver.checkConsistency()))
            case .dart(_, let driver)?: checks.append(.init(checker: "apple-dart \(spec.name)", violations: driver.checkConsistency()))
            case nil: break
            }
        }
        for domain in liveDomains() {
            let found: [ConsistencyViolation]?
            if let ops = domain.ops as? SMMUDomainOps {
                found = ops.withPageTable { $0.checkConsistency(memory: memory) }
            } else if let ops = domain.ops as? DARTDomainOps {
                found = ops.withPageTable { $0.checkConsistency(memory: memory) }
            } else {
                found = nil  // identity/blocked, or a virtio domain (the device's checker walks those)
            }
            if let found { checks.append(.init(checker: "page-table domain#\(domain.serial)", violations: found)) }
        }
        for (serial, iovad) in iovaDomains.sorted(by: { $0.key < $1.key }) {
            checks.append(.init(checker: "iova domain#\(serial)", violations: iovad.checkConsistency()))
        }
        for cookie in dmaCookies() {
            checks.append(.init(checker: "dma-iova domain#\(cookie.domain.serial)", violations: cookie.iovad.checkConsistency()))
            checks.append(.init(checker: "dma-cookie domain#\(cookie.domain.serial)", violations: cookie.checkConsistency()))
        }
        if let container { checks.append(.init(checker: "vfio", violations: container.checkConsistency())) }
        if let virtio { checks.append(.init(checker: "virtio-iommu", violations: virtio.device.checkConsistency())) }
        return checks
    }

    /// Every violation any checker found (`[]`: the whole platform is consistent).
    public func checkConsistency() -> [ConsistencyViolation] {
        consistencyChecks().flatMap(\.violations)
    }
}
