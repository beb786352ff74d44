import DMAMapping
import IOMMUBase
import IOMMUCore
import IOMMUHardware
import PhysicalMemory
import VFIOType1
import VirtioIOMMU

/// One soak thread: its RNG, what it has mapped, its counts. Touched only by its own thread while
/// a round runs, and by the coordinator between rounds (threads joined).
///
/// Threads share the devices and domains (as CPUs share them in Linux) but never operate on the
/// same range at once where Linux leaves that to the caller: each owns its racing-domain slots,
/// its VFIO IOVA window, its virtio endpoints and domains, and its accel device. Device reads may
/// target any thread's slot (that is the race).
final class SoakWorker: @unchecked Sendable {
    struct DMAPage { var device: DMADevice; var address: IOVA; var length: UInt64; var direction: DMAMapping.DMADirection; var paddr: PhysAddr; var bounced: Bool }

    let index: Int
    let platform: SoakPlatform
    var random: SplitMix64
    var counts = [Int](repeating: 0, count: SoakOperation.allCases.count)
    var violations: [String] = []
    var staleTLBReads = 0
    var timersFired = 0

    var pages: [DMAPage] = []
    var scatterLists: [(DMADevice, DMAScatterMapping, DMAMapping.DMADirection)] = []
    var coherent: [(DMADevice, DMACoherentBuffer)] = []
    /// Own racing-domain slots (slot index → mapped).
    var racerMapped: [Int: Bool] = [:]
    /// VFIO slot → mapped length.
    var vfioMapped: [Int: UInt64] = [:]
    /// IOVA pages this thread pinned through the emulated device.
    var pinned: [UInt64] = []
    /// virtio: endpoint → domain, domain → mapped slots (the device's expected state).
    var virtioEndpoint: [UInt32: UInt32] = [:]
    var virtioMappings: [UInt32: Set<Int>] = [:]
    var iovaLive: [(pfn: PFN, pages: UInt64)] = []

    static let liveLimit = 24

    init(index: Int, platform: SoakPlatform, seed: UInt64) {
        self.index = index
        self.platform = platform
        self.random = SplitMix64(seed: seed &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(index + 1))
        for s in 0..<SoakPlatform.racerSlots where s % platform.threads == index { racerMapped[s] = false }
    }

    func count(_ op: SoakOperation) { counts[SoakOperation.allCases.firstIndex(of: op)!] += 1 }
    func fail(_ text: String) { violations.append("thread \(index): \(text)") }
    func below(_ n: Int) -> Int { Int(random.next() % UInt64(n)) }
    func chance(_ percent: Int) -> Bool { below(100) < percent }

    /// One randomly chosen operation (or a map/unmap pair's half).
    func step() {
        let p = platform
        p.clock.advance(nanoseconds: 20_000)
        if counts.reduce(0, +) % 32 == 0 { timersFired += p.api.tick(cpu: index) }
        switch below(11) {
        case 0, 1: dmaPage()
        case 2: dmaSG()
        case 3: dmaCoherent()
        case 4: deviceRead()
        case 5: racingMapOrUnmap()
        case 6: vfio()
        case 7: virtioRequest()
        case 8: iovaAllocOrFree()
        case 9: attachDetach()
        default: chance(50) ? dmaBounce() : deviceRead()
        }
    }

    // MARK: - DMA API

    func dmaPage() {
        if pages.count >= Self.liveLimit || (!pages.isEmpty && chance(40)) {
            let m = pages.remove(at: below(pages.count))
            m.device.unmapPage(m.address, length: m.length, direction: m.direction, cpu: index)
            count(.dmaUnmapPage)
            return
        }
        let lazy = chance(50)
        let device = lazy ? platform.lazy : platform.strict
        let offset = UInt64(below(16)) << 12 + (chance(30) ? UInt64(below(64)) * 16 : 0)
        let length = UInt64(1 + below(Int(min(0x4000, SoakPlatform.bufferLength - offset))))
        let paddr = PhysAddr(platform.buffers[index].rawValue + offset)
        let direction = [DMAMapping.DMADirection.bidirectional, .toDevice, .fromDevice][below(3)]
        let address = device.mapPage(paddr, length: length, direction: direction, cpu: index)
        count(lazy ? .dmaMapPageLazy : .dmaMapPageStrict)
        guard !device.mappingError(address) else { fail("dma_map_page \(device.name) \(paddr) +\(length) failed"); return }
        if let domain = device.cookie?.domain, domain.iovaToPhys(address)?.rawValue != paddr.rawValue {
            fail("dma_map_page \(device.name) \(address) translates to \(domain.iovaToPhys(address).map { "\($0)" } ?? "nothing"), not \(paddr)")
        }
        pages.append(DMAPage(device: device, address: address, length: length, direction: direction, paddr: paddr, bounced: false))
    }

    func dmaBounce() {
        if let i = pages.firstIndex(where: \.bounced), pages.count >= Self.liveLimit || chance(50) {
            let m = pages.remove(at: i)
            m.device.unmapPage(m.address, length: m.length, direction: m.direction, cpu: index)
            count(.dmaUnmapPage)
            return
        }
        guard pages.count < Self.liveLimit else { return }
        let device = platform.untrusted
        // Unaligned: swiotlb bounces it (Linux: iommu_dma_map_page for an untrusted device).
        let offset = UInt64(below(15)) << 12 + 16 + UInt64(below(200)) * 8
        let length = UInt64(1 + below(3000))
        let paddr = PhysAddr(platform.buffers[index].rawValue + offset)
        let address = device.mapPage(paddr, length: length, direction: .toDevice, cpu: index)
        count(.dmaMapPageBounced)
        guard !device.mappingError(address) else { fail("bounced dma_map_page \(paddr) +\(length) failed"); return }
        // The device reads the bounce buffer, which holds a copy of the original bytes.
        let n = Int(min(length, 64))
        let expected = (try? platform.memory.readBytes(paddr, count: n)) ?? []
        let (bytes, outcome) = platform.smmu.dmaRead(streamID: StreamID(0x300), address: address.rawValue, length: n)
        count(.deviceDMA)
        if outcome.fault != nil || bytes != expected { fail("device read of bounced \(address) +\(n): \(outcome.fault.map { "\($0)" } ?? "wrong data")") }
        if let pool = platform.api.bouncePool, let pa = device.cookie?.domain.iovaToPhys(address), !pool.contains(pa) {
            fail("bounced mapping \(address) points at \(pa), outside the bounce pool")
        }
        pages.append(DMAPage(device: device, address: address, length: length, direction: .toDevice, paddr: paddr, bounced: true))
    }

    func dmaSG() {
        if scatterLists.count >= Self.liveLimit / 2 || (!scatterLists.isEmpty && chance(45)) {
            let (device, mapping, direction) = scatterLists.remove(at: below(scatterLists.count))
            device.unmapSG(mapping, direction: direction, cpu: index)
            count(.dmaUnmapSG)
            return
        }
        let device = chance(50) ? platform.lazy : platform.strict
        var entries: [DMAScatterEntry] = []
        for _ in 0..<(1 + below(4)) {
            let page = UInt64(below(16))
            let length = UInt64(1 + below(4)) << 10
            entries.append(DMAScatterEntry(paddr: PhysAddr(platform.buffers[index].rawValue + page << 12), length: min(length, 4096)))
        }
        count(.dmaMapSG)
        guard let mapping = device.mapSG(entries, direction: .bidirectional, cpu: index) else { fail("dma_map_sg \(device.name) failed"); return }
        scatterLists.append((device, mapping, .bidirectional))
    }

    func dmaCoherent() {
        if coherent.count >= Self.liveLimit / 2 || (!coherent.isEmpty && chance(45)) {
            let (device, buffer) = coherent.remove(at: below(coherent.count))
            device.freeCoherent(buffer, cpu: index)
            count(.dmaFreeCoherent)
            return
        }
        let device = chance(50) ? platform.lazy : platform.strict
        count(.dmaAllocCoherent)
        guard let buffer = device.allocCoherent(size: UInt64(1 + below(4)) << 12, cpu: index) else { fail("dma_alloc_coherent \(device.name) failed"); return }
        coherent.append((device, buffer))
    }

    // MARK: - Device DMA racing unmap (one unmanaged domain, slots owned per thread)

    func slotIOVA(_ slot: Int) -> UInt64 { SoakPlatform.racerBase + UInt64(slot) << 16 }

    /// A device read of any slot: it faults (unmapped, or being unmapped) or returns that slot's tag.
    func deviceRead() {
        let slot = below(SoakPlatform.racerSlots)
        let (bytes, outcome) = platform.smmu.dmaRead(streamID: platform.racerStream, address: slotIOVA(slot) + UInt64(below(4000)), length: 8)
        count(.deviceDMA)
        if outcome.fault != nil { return }
        if outcome.usedStaleTLBEntry { staleTLBReads += 1 }
        if bytes != [UInt8](repeating: UInt8(0x40 + slot), count: 8) { fail("device read of racing slot \(slot) returned \(bytes)") }
        if racerMapped[slot] == false { fail("device read of own unmapped racing slot \(slot) succeeded") }
    }

    func racingMapOrUnmap() {
        let own = racerMapped.keys.sorted()
        let slot = own[below(own.count)]
        let iova = slotIOVA(slot)
        let domain = platform.racerDomain
        if racerMapped[slot]! {
            let unmapped = domain.unmap(iova: IOVA(iova), length: 4096)
            count(.racingUnmap)
            racerMapped[slot] = false
            if unmapped != 4096 { fail("iommu_unmap of racing slot \(slot) unmapped \(unmapped) bytes") }
            // Strict: once iommu_unmap returns, the IOTLB is invalidated and synced.
            let (_, outcome) = platform.smmu.dmaRead(streamID: platform.racerStream, address: iova, length: 8)
            count(.deviceDMA)
            if outcome.fault == nil { fail("device read right after iommu_unmap of slot \(slot) did not fault (stale \(outcome.usedStaleTLBEntry))") }
        } else {
            do throws(IOMMUError) {
                try domain.map(iova: IOVA(iova), paddr: platform.racerPages[slot], length: 4096, prot: [.read, .write])
            } catch { fail("iommu_map of racing slot \(slot): \(error)") }
            count(.racingMap)
            racerMapped[slot] = true
            let (bytes, outcome) = platform.smmu.dmaRead(streamID: platform.racerStream, address: iova, length: 8)
            count(.deviceDMA)
            if outcome.fault != nil || bytes != [UInt8](repeating: UInt8(0x40 + slot), count: 8) {
                fail("device read right after iommu_map of slot \(slot): \(outcome.fault.map { "\($0)" } ?? "data \(bytes)")")
            }
        }
    }

    // MARK: - Core attach/detach

    func attachDetach() {
        let p = platform
        let id = p.accelIDs[index % p.accelIDs.count]
        let stream = p.accelStreams[index % p.accelStreams.count]
        let k = below(p.accelDomains.count)
        let domain = p.accelDomains[k]
        do throws(IOMMUError) { try p.core.attachDevice(domain, to: id) } catch { fail("attach accel to domain \(k): \(error)"); return }
        count(.coreAttach)
        if p.core.domain(for: id) !== domain { fail("after attach, accel is on \(p.core.domain(for: id).map { "\($0)" } ?? "no domain")") }
        let (bytes, outcome) = p.smmu.dmaRead(streamID: stream, address: SoakPlatform.accelIOVA, length: 4)
        count(.deviceDMA)
        if outcome.fault != nil || bytes != [UInt8](repeating: UInt8(0xA0 + k), count: 4) {
            fail("accel read through domain \(k): \(outcome.fault.map { "\($0)" } ?? "data \(bytes)")")
        }
        p.core.detachDevice(domain, from: id)
        count(.coreDetach)
        if p.core.domain(for: id) !== p.core.defaultDomain(for: id) { fail("after detach, accel is not back on its default domain") }
        let (_, after) = p.smmu.dmaRead(streamID: stream, address: SoakPlatform.accelIOVA, length: 4)
        count(.deviceDMA)
        if after.fault == nil { fail("accel read after detach did not fault") }
    }

    // MARK: - VFIO

    func vfioIOVA(_ slot: Int) -> UInt64 { SoakPlatform.vfioBase + UInt64(index) << 28 + UInt64(slot) * SoakPlatform.vfioSlotLength }

    func vfio() {
        let p = platform
        let roll = below(100)
        if roll < 30, !vfioMapped.isEmpty {
            // UNMAP_DMA of a whole mapping; the notifier unpins what the mdev holds in it.
            let slot = vfioMapped.keys.sorted()[below(vfioMapped.count)]
            let length = vfioMapped[slot]!
            do throws(IOMMUError) {
                let bytes = try p.container.unmapDMA(iova: IOVA(vfioIOVA(slot)), length: length)
                if bytes != length { fail("VFIO_IOMMU_UNMAP_DMA of slot \(slot) unmapped \(bytes) of \(length) bytes") }
            } catch { fail("VFIO_IOMMU_UNMAP_DMA of slot \(slot): \(error)") }
            count(.vfioUnmap)
            vfioMapped[slot] = nil
            let first = vfioIOVA(slot)
            pinned.removeAll { $0 >= first && $0 < first + length }
        } else if roll < 55, !vfioMapped.isEmpty {
            let slot = vfioMapped.keys.sorted()[below(vfioMapped.count)]
            let page = vfioIOVA(slot) + UInt64(below(Int(vfioMapped[slot]! >> 12))) << 12
            guard !pinned.contains(page) else { return }
            do throws(IOMMUError) {
                let pas = try p.mdev.pinPages(iova: IOVA(page), count: 1, prot: [.read, .write])
                let expected = try p.host.translate(VirtAddr(p.processRegions[index].first.rawValue + (page - vfioIOVA(0))))
                if pas.first != expected { fail("vfio_pin_pages \(IOVA(page)) returned \(pas), the process page is \(expected)") }
            } catch { fail("vfio_pin_pages \(IOVA(page)): \(error)"); return }
            p.counters.pins.withLock { $0[page, default: 0] += 1 }
            pinned.append(page)
            count(.vfioPin)
        } else if roll < 65, !pinned.isEmpty {
            let page = pinned.remove(at: below(pinned.count))
            p.counters.pins.withLock { $0[page] = nil }
            p.mdev.unpinPages(iova: IOVA(page), count: 1)
            count(.vfioUnpin)
        } else {
            let free = (0..<SoakPlatform.vfioSlots).filter { vfioMapped[$0] == nil }
            guard !free.isEmpty else { return }
            let slot = free[below(free.count)]
            let length = UInt64([1, 4, 16][below(3)]) << 12
            let vaddr = VirtAddr(p.processRegions[index].first.rawValue + UInt64(slot) * SoakPlatform.vfioSlotLength)
            do throws(IOMMUError) {
                try p.container.mapDMA(iova: IOVA(vfioIOVA(slot)), vaddr: vaddr, length: length, read: true, write: true)
            } catch { fail("VFIO_IOMMU_MAP_DMA slot \(slot) +\(length): \(error)"); return }
            count(.vfioMap)
            vfioMapped[slot] = length
        }
    }

    // MARK: - virtio-iommu (a guest's requests)

    func virtioRequest() {
        let endpoints = [UInt32(2 * index + 1), UInt32(2 * index + 2)]
        let domains = (0..<3).map { UInt32(100 * (index + 1) + $0) }
        let live = Set(virtioEndpoint.values)
        let roll = below(100)
        if live.isEmpty || roll < 20 {
            let endpoint = endpoints[below(2)]
            let domain = domains[below(3)]
            let status = send(attach: domain, endpoint: endpoint)
            count(.virtioAttach)
            if status != .ok { fail("virtio ATTACH \(domain) ← \(endpoint): \(status.map { "\($0)" } ?? "no answer")"); return }
            let current = virtioEndpoint[endpoint]
            let sharers = virtioEndpoint.filter { $0.value == current }.count
            if let current, sharers == 1 { virtioMappings[current] = nil }   // the old domain died with its mappings
            virtioEndpoint[endpoint] = domain
            return
        }
        let domain = live.sorted()[below(live.count)]
        let mapped = virtioMappings[domain, default: []]
        if roll < 60 || mapped.isEmpty {
            guard let slot = (0..<16).filter({ !mapped.contains($0) }).randomElement(using: &random) else { return }
            let first = 0x1000_0000 + UInt64(slot) << 12
            let phys = platform.buffers[index].rawValue + UInt64(slot) << 12
            let status = send(type: 3, domain: domain, first: first, last: first + 0xFFF, phys: phys, flags: 3)
            count(.virtioMap)
            if status != .ok { fail("virtio MAP domain \(domain) slot \(slot): \(status.map { "\($0)" } ?? "no answer")"); return }
            virtioMappings[domain, default: []].insert(slot)
            // An endpoint of the domain reads it through the domain's table.
            if let endpoint = virtioEndpoint.first(where: { $0.value == domain })?.key {
                let (bytes, outcome) = platform.virtio.endpointDMARead(endpoint: endpoint, iova: first, count: 4)
                let expected = (try? platform.memory.readBytes(PhysAddr(phys), count: 4)) ?? []
                if bytes != expected { fail("virtio endpoint \(endpoint) read of \(IOVA(first)): \(outcome)") }
            }
        } else {
            let slot = mapped.sorted()[below(mapped.count)]
            let first = 0x1000_0000 + UInt64(slot) << 12
            let status = send(type: 4, domain: domain, first: first, last: first + 0xFFF, phys: 0, flags: 0)
            count(.virtioUnmap)
            if status != .ok { fail("virtio UNMAP domain \(domain) slot \(slot): \(status.map { "\($0)" } ?? "no answer")"); return }
            virtioMappings[domain]?.remove(slot)
        }
    }

    func send(attach domain: UInt32, endpoint: UInt32) -> VirtioIOMMUStatus? {
        var r = [UInt8](repeating: 0, count: 20)
        r[0] = 1
        put32(&r, 4, domain)
        put32(&r, 8, endpoint)
        return status(r)
    }

    func send(type: UInt8, domain: UInt32, first: UInt64, last: UInt64, phys: UInt64, flags: UInt32) -> VirtioIOMMUStatus? {
        var r = [UInt8](repeating: 0, count: type == 3 ? 36 : 28)
        r[0] = type
        put32(&r, 4, domain)
        put64(&r, 8, first)
        put64(&r, 16, last)
        if type == 3 {
            put64(&r, 24, phys)
            put32(&r, 32, flags)
        }
        return status(r)
    }

    func status(_ request: [UInt8]) -> VirtioIOMMUStatus? {
        let (written, used) = platform.virtio.handleRequest(readable: request, writableLength: 4)
        guard used == 4 else { return nil }
        return VirtioIOMMUStatus(rawValue: written[0])
    }

    func put32(_ r: inout [UInt8], _ at: Int, _ v: UInt32) { for i in 0..<4 { r[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    func put64(_ r: inout [UInt8], _ at: Int, _ v: UInt64) { for i in 0..<8 { r[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }

    // MARK: - IOVA allocator (alloc_iova_fast / free_iova_fast on this thread's CPU)

    func iovaAllocOrFree() {
        if iovaLive.count >= Self.liveLimit || (!iovaLive.isEmpty && chance(45)) {
            let a = iovaLive.remove(at: below(iovaLive.count))
            platform.iova.fastFree(pfn: a.pfn, size: a.pages, cpu: index)
            count(.iovaFree)
            return
        }
        let pages = UInt64(1) << UInt64(below(5)) + (chance(20) ? UInt64(below(3)) : 0)
        let limit: UInt64 = chance(50) ? 0xFFFF_FFFF >> 12 : (1 << 36) - 1
        count(.iovaAlloc)
        do throws(IOMMUError) {
            let pfn = try platform.iova.fastAlloc(size: pages, limitPFN: limit, flushCaches: true, cpu: index)
            if pfn.rawValue + pages - 1 > limit { fail("alloc_iova_fast(\(pages), limit \(limit)) returned \(pfn)") }
            iovaLive.append((pfn, pages))
        } catch { fail("alloc_iova_fast(\(pages)): \(error)") }
    }

    // MARK: - End of run

    /// Undoes everything this thread still has mapped, pinned or allocated.
    func release() {
        for m in pages { m.device.unmapPage(m.address, length: m.length, direction: m.direction, cpu: index) }
        pages = []
        for (device, mapping, direction) in scatterLists { device.unmapSG(mapping, direction: direction, cpu: index) }
        scatterLists = []
        for (device, buffer) in coherent { device.freeCoherent(buffer, cpu: index) }
        coherent = []
        for (slot, mapped) in racerMapped where mapped {
            if platform.racerDomain.unmap(iova: IOVA(slotIOVA(slot)), length: 4096) != 4096 { fail("final unmap of racing slot \(slot)") }
            racerMapped[slot] = false
        }
        for (slot, length) in vfioMapped.sorted(by: { $0.key < $1.key }) {
            do throws(IOMMUError) { _ = try platform.container.unmapDMA(iova: IOVA(vfioIOVA(slot)), length: length) } catch {
                fail("final VFIO unmap of slot \(slot): \(error)")
            }
        }
        vfioMapped = [:]
        pinned = []
        for a in iovaLive { platform.iova.fastFree(pfn: a.pfn, size: a.pages, cpu: index) }
        iovaLive = []
    }
}
