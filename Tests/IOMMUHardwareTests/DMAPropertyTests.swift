import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

/// Random device DMA against random mappings made through the core's domain API, checked
/// against a model of the domain: translation, permission and fault; including the lazy window in
/// which a stale TLB entry may still serve an unmapped page, and only until the flush.
@Suite("Device DMA property")
struct DMAPropertyTests {
    struct Mapping: Equatable {
        var frame: UInt64
        var writable: Bool
    }

    static let base: UInt64 = 0x10_0000   // region of 4K pages
    static let pageCount: UInt64 = 48
    static let blockBase: UInt64 = 0x4000_0000  // two 2M block slots

    /// Every seed with a stage-1 SMMU, and the first two with a stage-2-only SMMU (VTTBR/VTCR walks).
    static let cases: [(UInt64, Bool)] = TestSupport.propertySeeds.map { ($0, false) } + TestSupport.propertySeeds.prefix(2).map { ($0, true) }

    @Test(arguments: cases)
    func randomDMAAgreesWithTheDomainModel(seed: UInt64, stage2: Bool) throws {
        var rng = SplitMix64(seed: seed)
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0") { $0.tlbEntryCount = 8; $0.supportsStage1 = !stage2 }
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("dev", "smmu0", 0x42))
        let domain = try #require(m.core.domain(for: dev))

        // Data frames with distinct contents; 2M frames for blocks.
        var frames: [UInt64] = []
        for i in 0..<24 {
            let frame = try m.frames.allocate(.size4K)
            try m.memory.fill(frame, length: 4096, with: UInt8(i + 1))
            frames.append(frame.rawValue)
        }
        let blockFrames = try (0..<2).map { _ in try m.frames.allocate(.size2M).rawValue }

        var model: [UInt64: Mapping] = [:]          // iova page -> mapping (4K granularity)
        var staleWindow: [UInt64: [Mapping]] = [:]  // lazily unmapped mappings per page, until flushIOTLBAll
        var staleHitsSeen = 0
        var recent: [UInt64] = []  // recently accessed 4K-region pages: locality for TLB hits

        func modelPage(_ iova: UInt64) -> UInt64 { iova & ~0xFFF }

        for step in 0..<1500 {
            let op = rng.next() % 100
            switch op {
            case 0..<25:  // map a run of 4K pages
                let first = rng.next() % Self.pageCount
                let count = 1 + rng.next() % 4
                let frameIndex = Int(rng.next() % UInt64(frames.count))
                let writable = rng.next() % 2 == 0
                let iova = Self.base + first << 12
                let runFrames = (0..<count).map { frames[(frameIndex + Int($0)) % frames.count] }
                // Map page by page (frames need not be contiguous).
                for (i, frame) in runFrames.enumerated() {
                    let va = iova + UInt64(i) << 12
                    guard va < Self.base + Self.pageCount << 12 else { break }
                    do {
                        try domain.map(iova: IOVA(va), paddr: PhysAddr(frame), length: 4096, prot: writable ? [.read, .write] : [.read])
                        #expect(model[va] == nil, "seed \(seed) step \(step): map over a model mapping succeeded")
                        model[va] = Mapping(frame: frame, writable: writable)
                    } catch {
                        #expect(model[va] != nil && error.code == .exists, "seed \(seed) step \(step): \(error)")
                    }
                }
            case 25..<40:  // strict unmap
                let first = rng.next() % Self.pageCount
                let count = 1 + rng.next() % 4
                let iova = Self.base + first << 12
                let unmapped = domain.unmap(iova: IOVA(iova), length: count << 12)
                var expected: UInt64 = 0
                while expected < count << 12, model[iova + expected] != nil {
                    model[iova + expected] = nil
                    staleWindow[iova + expected] = nil  // the sync invalidated any stale entry
                    expected += 4096
                }
                #expect(unmapped == expected, "seed \(seed) step \(step)")
            case 40..<48:  // lazy unmap: no per-page invalidation, no sync
                let iova = !recent.isEmpty && rng.next() % 2 == 0
                    ? recent[Int(rng.next() % UInt64(recent.count))] : Self.base + (rng.next() % Self.pageCount) << 12
                var gather = IOTLBGather(queued: true)
                let unmapped = domain.unmapFast(iova: IOVA(iova), length: 4096, gather: &gather)
                domain.iotlbSync(&gather)
                if let old = model.removeValue(forKey: iova) {
                    #expect(unmapped == 4096)
                    staleWindow[iova, default: []].append(old)
                } else {
                    #expect(unmapped == 0)
                }
            case 48..<52:  // the flush queue drains
                domain.flushIOTLBAll()
                staleWindow.removeAll()
            case 52..<56:  // a 2M block: map or unmap a whole slot
                let slot = rng.next() % 2
                let iova = Self.blockBase + slot << 21
                if model[iova] == nil {
                    try domain.map(iova: IOVA(iova), paddr: PhysAddr(blockFrames[Int(slot)]), length: 1 << 21, prot: [.read, .write])
                    for p in stride(from: UInt64(0), to: 1 << 21, by: 4096) {
                        model[iova + p] = Mapping(frame: blockFrames[Int(slot)] + p, writable: true)
                    }
                } else {
                    #expect(domain.unmap(iova: IOVA(iova), length: 1 << 21) == 1 << 21)
                    for p in stride(from: UInt64(0), to: 1 << 21, by: 4096) {
                        model[iova + p] = nil
                        staleWindow[iova + p] = nil
                    }
                }
            default:  // device DMA, possibly crossing into the next page
                let inBlock = rng.next() % 5 == 0
                let hot = !recent.isEmpty && rng.next() % 2 == 0
                let page = inBlock ? Self.blockBase + (rng.next() % 2) << 21 + (rng.next() % 512) << 12
                    : hot ? recent[Int(rng.next() % UInt64(recent.count))] : Self.base + (rng.next() % Self.pageCount) << 12
                if !inBlock && !hot {
                    recent.append(page)
                    if recent.count > 6 { recent.removeFirst() }
                }
                let offset = rng.next() % 4096
                let length = Int(1 + rng.next() % 64)
                let address = page + offset
                let isWrite = rng.next() % 3 == 0
                let pages = Set([modelPage(address), modelPage(address + UInt64(length) - 1)]).sorted()
                let payload = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                let outcome: DMAOutcome
                var readBytes: [UInt8] = []
                if isWrite {
                    outcome = m.platform.dmaWrite(device: dev, address: address, bytes: payload)
                } else {
                    (readBytes, outcome) = m.platform.dmaRead(device: dev, address: address, length: length)
                }
                #expect(!outcome.bypassed)
                // Per page, the mappings the hardware may have used: the model's, and — only when
                // the outcome reports a stale TLB hit — the one a lazy unmap removed (its TLB entry
                // may still be there). Without a stale hit the model must match exactly.
                let staleAllowed = outcome.staleTLBHits > 0
                if staleAllowed {
                    staleHitsSeen += outcome.staleTLBHits
                    #expect(pages.contains { staleWindow[$0] != nil }, "seed \(seed) step \(step): stale hit outside the lazy window")
                }
                func candidates(_ p: UInt64) -> [Mapping?] {
                    var list: [Mapping?] = [model[p]]
                    if staleAllowed { list += (staleWindow[p] ?? []).map { Optional($0) } }
                    return list
                }
                // Walk the pages in order as the hardware does: all must translate, or the first
                // that cannot is the fault.
                var cursor = address
                var ok = true
                for p in pages {
                    let start = max(p, address)
                    let chunk = Int(min(UInt64(length) - (cursor - address), p + 4096 - cursor))
                    let options = candidates(p)
                    if let fault = outcome.fault, fault.address == start {
                        let explained = options.contains { mapping in
                            guard let mapping else { return fault.reason == .translation }
                            return isWrite && !mapping.writable && fault.reason == .permission
                        }
                        #expect(explained, "seed \(seed) step \(step): \(fault) not explained by \(options)")
                        ok = false
                        break
                    }
                    let permitted = options.compactMap { $0 }.filter { !isWrite || $0.writable }
                    #expect(!permitted.isEmpty, "seed \(seed) step \(step): page \(String(p, radix: 16)) should have faulted, got \(String(describing: outcome.fault))")
                    if outcome.fault == nil {
                        let offsetInData = Int(cursor - address)
                        let expected = isWrite ? Array(payload[offsetInData..<offsetInData + chunk]) : Array(readBytes[offsetInData..<offsetInData + chunk])
                        var matched = false
                        for mapping in permitted where try m.memory.readBytes(PhysAddr(mapping.frame + (start - p)), count: chunk) == expected {
                            matched = true
                        }
                        #expect(matched, "seed \(seed) step \(step): bytes of page \(String(p, radix: 16)) match no candidate")
                    }
                    cursor += UInt64(chunk)
                }
                if outcome.fault != nil {
                    #expect(!ok, "seed \(seed) step \(step): fault \(String(describing: outcome.fault)) at an unexpected address")
                    #expect(outcome.bytesMoved == 0)
                } else {
                    #expect(outcome.bytesMoved == length)
                }
                // The software view agrees with the model (stale entries are a TLB matter only).
                for p in pages {
                    #expect(domain.iovaToPhys(IOVA(p))?.rawValue == model[p]?.frame, "seed \(seed) step \(step)")
                }
            }
        }
        #expect(smmu.tlbStatistics.hits > 0)
        #expect(staleHitsSeen > 0, "seed \(seed): the lazy window was never observed")
        #expect(smmu.tlbStatistics.staleHits == UInt64(staleHitsSeen))
    }
}

/// The same property on a DART (16 KiB pages, 16 KiB CPU pages so the DMA domain translates):
/// strict unmaps are invalidated at their sync, lazy ones stay visible until the flush.
@Suite("Device DMA property (DART)")
struct DARTDMAPropertyTests {
    struct Mapping: Equatable {
        var frame: UInt64
        var writable: Bool
    }

    @Test(arguments: TestSupport.propertySeeds)
    func randomDARTDMAAgreesWithTheDomainModel(seed: UInt64) throws {
        let page: UInt64 = 0x4000
        var rng = SplitMix64(seed: seed)
        let m = TestMachine(cpuPageSize: .size16K)
        let dart = m.addDART("dart0") { $0.tlbEntryCount = 6 }
        try m.registerDART("dart0")
        let dev = try m.core.addDevice(.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(5)])))
        let domain = try #require(m.core.domain(for: dev))
        #expect(domain.type == .dma)
        var frames: [UInt64] = []
        for i in 0..<12 {
            let frame = try m.frames.allocate(.size16K)
            try m.memory.fill(frame, length: page, with: UInt8(0x80 + i))
            frames.append(frame.rawValue)
        }
        let base: UInt64 = 0x100_0000
        let pageCount: UInt64 = 24
        var model: [UInt64: Mapping] = [:]
        var staleWindow: [UInt64: [Mapping]] = [:]
        var staleHits = 0
        var lastDMA = base
        var lastLazy = base
        for step in 0..<1200 {
            var iova = base + (rng.next() % pageCount) * page
            let op = rng.next() % 100
            // Locality, so that the lazy window is actually hit: lazily unmap what a device just
            // used, and let the device come back to it.
            if (38..<48).contains(op) && rng.next() % 10 < 7 { iova = lastDMA }
            if op >= 52 && rng.next() % 10 < 3 { iova = lastLazy }
            if (38..<48).contains(op) { lastLazy = iova }
            if op >= 52 { lastDMA = iova }
            switch op {
            case 0..<25:
                let writable = rng.next() % 2 == 0
                let frame = frames[Int(rng.next() % UInt64(frames.count))]
                do {
                    try domain.map(iova: IOVA(iova), paddr: PhysAddr(frame), length: page, prot: writable ? [.read, .write] : [.read])
                    #expect(model[iova] == nil)
                    model[iova] = Mapping(frame: frame, writable: writable)
                } catch {
                    #expect(model[iova] != nil && error.code == .exists, "seed \(seed) step \(step)")
                }
            case 25..<38:
                let unmapped = domain.unmap(iova: IOVA(iova), length: page)
                #expect(unmapped == (model[iova] == nil ? 0 : page))
                model[iova] = nil
                staleWindow[iova] = nil
            case 38..<48:
                var gather = IOTLBGather(queued: true)
                let unmapped = domain.unmapFast(iova: IOVA(iova), length: page, gather: &gather)
                if let old = model.removeValue(forKey: iova) {
                    #expect(unmapped == page)
                    staleWindow[iova, default: []].append(old)
                }
            case 48..<52:
                domain.flushIOTLBAll()
                staleWindow.removeAll()
            default:
                let offset = rng.next() % (page - 64)
                let isWrite = rng.next() % 3 == 0
                let payload = (0..<16).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                var bytes: [UInt8] = []
                let outcome: DMAOutcome
                if isWrite {
                    outcome = m.platform.dmaWrite(device: dev, address: iova + offset, bytes: payload)
                } else {
                    (bytes, outcome) = m.platform.dmaRead(device: dev, address: iova + offset, length: 16)
                }
                var candidates: [Mapping?] = [model[iova]]
                if outcome.staleTLBHits > 0 {
                    staleHits += 1
                    #expect(staleWindow[iova] != nil, "seed \(seed) step \(step): stale hit outside the lazy window")
                    candidates += (staleWindow[iova] ?? []).map { Optional($0) }
                }
                if let fault = outcome.fault {
                    let explained = candidates.contains { mapping in
                        guard let mapping else { return fault.reason == .translation }
                        return isWrite && !mapping.writable && fault.reason == .permission
                    }
                    #expect(explained, "seed \(seed) step \(step): \(fault)")
                } else {
                    let permitted = candidates.compactMap { $0 }.filter { !isWrite || $0.writable }
                    var matched = false
                    for mapping in permitted
                    where try m.memory.readBytes(PhysAddr(mapping.frame + offset), count: 16) == (isWrite ? payload : bytes) {
                        matched = true
                    }
                    #expect(matched, "seed \(seed) step \(step): bytes match no permitted mapping: write \(isWrite) iova \(String(iova, radix: 16)) cands \(candidates) stale \(outcome.staleTLBHits) got \(bytes.prefix(4)) tlb \(dart.tlbEntries)")
                }
            }
        }
        #expect(staleHits > 0, "seed \(seed): the lazy window was never observed")
        #expect(dart.tlbStatistics.staleHits >= UInt64(staleHits))
    }
}
