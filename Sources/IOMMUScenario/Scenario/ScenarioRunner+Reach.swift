import DMAMapping
import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOPageTable
import PhysicalMemory
import VFIOType1

// MARK: - Isolation audit (`iommu inspect --reach DEVICE`)

extension ScenarioRunner {
    /// A buffer in IOVA space: what a driver (or the workload) asked to be reachable.
    struct ReachBuffer {
        var first: UInt64
        var last: UInt64
        var owner: String
    }

    /// How the hardware routes one stream: nowhere, everywhere, or through a page table.
    enum StreamRoute {
        case fault(String)
        case bypass(String)
        /// `context` is the TLB tag (SMMU context bank, DART stream); `key` dedupes streams sharing a table.
        case translate(key: String, walker: HardwareWalker, context: Int, asid: UInt16, vmid: UInt16, tlb: [TLBEntry], domain: IOMMUDomain?, what: String)
    }

    /// What device `name` can reach in physical memory now (nil: no device of that name in the
    /// platform). See `DeviceReach`.
    public func reach(device name: String) -> DeviceReach? {
        guard let spec = scenario.platform.devices.first(where: { $0.name == name }) else { return nil }
        var out = DeviceReach(device: name, step: stepsRun, routes: [], entries: [])
        let mask = spec.dmaMaskBits >= 64 ? UInt64.max : (UInt64(1) << UInt64(spec.dmaMaskBits)) - 1
        if deviceIDs[name] == nil { out.routes.append("\(name) is not added to the core (not present, or removed); the hardware still routes its streams") }
        if let v = virtio, v.spec.endpoints.contains(where: { $0.device == name }) {
            virtioReach(name, mask: mask, into: &out)
        } else if let iommu = spec.iommu, let hw = hardware[iommu] {
            var seen: [String: Int] = [:]
            for sid in spec.streamIDs {
                let route: StreamRoute
                switch hw {
                case .smmu(let smmu, _): route = smmuRoute(smmu, sid: sid)
                case .dart(let dart, _): route = dartRoute(dart, sid: sid)
                }
                let via = "\(iommu) sid 0x\(String(sid, radix: 16))"
                switch route {
                case .fault(let why):
                    out.routes.append("\(via): \(why) — reaches nothing")
                case .bypass(let why):
                    out.routes.append("\(via): \(why) — bypass")
                    if let i = out.entries.firstIndex(where: { $0.reason == .bypass }) {
                        out.entries[i].via += ", " + via  // one bypass covers it all
                    } else {
                        out.entries.append(bypassEntry(mask: mask, via: via, why: why))
                    }
                case let .translate(key, walker, context, asid, vmid, tlb, domain, what):
                    let domainText = domain.map { "domain#\($0.serial) (\($0.type.sysfsName))" }
                    out.routes.append("\(via): \(what) → \(domainText ?? "no live domain uses this table")")
                    let leaves = walker.leaves()
                    if seen[key] == nil {
                        seen[key] = out.entries.count
                        out.entries += leafEntries(leaves, buffers: domain.map(buffers(in:)) ?? [], domain: domainText, via: "\(via) → \(what)")
                    }
                    out.entries += staleEntries(tlb.filter { $0.context == context && $0.asid == asid && $0.vmid == vmid },
                                                leaves: leaves, via: "\(via) → \(what)")
                }
            }
        } else {
            out.routes.append("no IOMMU: DMA addresses are physical addresses — bypass")
            out.entries.append(bypassEntry(mask: mask, via: "no IOMMU", why: "no IOMMU"))
        }
        out.entries = Self.merged(out.entries)
        return out
    }

    func bypassEntry(mask: UInt64, via: String, why: String) -> DeviceReach.Entry {
        let ram = memory.ram
        return .init(first: 0, last: mask, reason: .bypass, via: via,
                     detail: "\(why): every address the device can emit (DMA mask 0x\(String(mask, radix: 16))), including all RAM \(ram.first)..\(PhysAddr(ram.first.rawValue &+ ram.length &- 1))")
    }

    // MARK: Hardware routes

    /// Follows a stream through SCR0, the SMRs and S2CRs to a context bank, as the SMMU model does.
    func smmuRoute(_ smmu: ARMSMMU, sid: UInt32) -> StreamRoute {
        let r = smmu.registerSnapshot()
        if r.scr0 & SMMURegister.sCR0ClientPD != 0 { return .bypass("SCR0.CLIENTPD=1 (the SMMU is disabled)") }
        let key = sid & UInt32((1 << smmu.configuration.streamIDBits) - 1)
        let matches: [Int] = r.smrs.isEmpty ? [Int(key)] : r.smrs.indices.filter { r.smrs[$0].valid && r.smrs[$0].matches(sid) }
        guard let index = matches.first else {
            return r.scr0 & SMMURegister.sCR0USFCFG != 0 ? .fault("no SMR matches, SCR0.USFCFG=1: unidentified-stream fault")
                : .bypass("no SMR matches, SCR0.USFCFG=0: unmatched streams bypass")
        }
        if matches.count > 1 { return .fault("SMRs \(matches.map(String.init).joined(separator: ", ")) all match: stream-match conflict fault") }
        let smr = r.smrs.isEmpty ? "S2CR\(index)" : "SMR\(index)"
        let s2cr = r.s2crs[index]
        switch s2cr.type {
        case .bypass: return .bypass("\(smr) → S2CR bypass")
        case .fault: return .fault("\(smr) → S2CR fault")
        case .translate: break
        }
        let bank = Int(s2cr.contextBank)
        guard bank < r.contextBanks.count else { return .fault("\(smr) → S2CR cb \(bank), no such context bank") }
        let cb = r.contextBanks[bank]
        guard cb.isEnabled else { return .bypass("\(smr) → S2CR translate cb \(bank), SCTLR.M=0 (context bank disabled)") }
        let what = "\(smr) → S2CR translate cb \(bank) (TTBR0 0x\(String(cb.ttbr0, radix: 16)))"
        guard let walker = ARMSMMU.makeWalker(memory: memory, cb) else { return .fault("\(what): the bank's type/format translates nothing") }
        let domain = liveDomains().first { d in
            guard let ops = d.ops as? SMMUDomainOps, ops.contextBank == bank else { return false }
            switch ops.tableRegisters {
            case .stage1(let t)?: return t.ttbr == cb.ttbr0 & 0x0000_FFFF_FFFF_FFFF
            case .stage2(let t)?: return t.vttbr == cb.ttbr0
            default: return false
            }
        }
        return .translate(key: "\(smmu.instanceName) cb \(bank)", walker: walker, context: bank, asid: cb.asid, vmid: cb.vmid,
                          tlb: smmu.tlbEntries, domain: domain, what: what)
    }

    /// A DART stream's TCR/TTBRs, as the DART model reads them.
    func dartRoute(_ dart: DART, sid: UInt32) -> StreamRoute {
        guard sid < UInt32(dart.configuration.streamCount) else { return .fault("stream beyond the DART's \(dart.configuration.streamCount) streams") }
        let r = dart.readStream(Int(sid))
        if r.tcr & DARTRegister.tcrBypassDART != 0 && dart.configuration.supportsBypass { return .bypass("TCR bypass") }
        guard r.tcr & DARTRegister.tcrTranslateEnable != 0 else { return .fault("TCR translation disabled (blocked)") }
        let what = "TCR translate, TTBRs \(r.ttbrs.filter { $0 & DARTRegister.ttbrValid != 0 }.map { "0x" + String($0, radix: 16) }.joined(separator: " "))"
        guard let walker = try? HardwareWalker(memory: memory, dartTTBRs: r.ttbrs, tcr: r.tcr, isDART2: false,
                                               outputBits: dart.configuration.outputAddressBits)
        else { return .fault("\(what): no valid TTBR") }
        let domain = liveDomains().first { d in
            guard let ops = d.ops as? DARTDomainOps, case .dart(let t)? = ops.tableRegisters else { return false }
            return t.tcr == r.tcr && (t.ttbrs + [0, 0, 0, 0]).prefix(4).elementsEqual(r.ttbrs)
        }
        return .translate(key: "\(dart.instanceName) \(r.tcr) \(r.ttbrs)", walker: walker, context: Int(sid), asid: 0, vmid: 0,
                          tlb: dart.tlbEntries, domain: domain, what: what)
    }

    // MARK: Buffers (software records: who asked for what)

    /// Every buffer mapped into `domain` that the platform knows of: live DMA-API mappings of
    /// any device using the domain (scatterlists by segment), `map` steps, VFIO mappings.
    func buffers(in domain: IOMMUDomain) -> [ReachBuffer] {
        var out: [ReachBuffer] = []
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        var seen = Set<DMAMappingRecord>()
        for (_, dev) in dmaLayer.devices.sorted(by: { $0.key < $1.key }) where dev.cookie?.domain.serial == domain.serial {
            for r in dev.liveMappings where seen.insert(r).inserted && r.size > 0 {
                let device = core.deviceInfo(r.device)?.name ?? "\(r.device)"
                let label = namedValues.first { $0.value == r.address.rawValue }.map { " $\($0.key)" } ?? ""
                switch r.kind {
                case .scatterGather:
                    if let sg = dmaLayer.scatterLists.sorted(by: { $0.key < $1.key }).first(where: { $0.value.iova == r.address && $0.value.iovaLength == r.size }) {
                        for (i, s) in sg.value.segments.enumerated() where s.length > 0 {
                            out.append(.init(first: s.address.rawValue, last: s.address.rawValue &+ s.length &- 1,
                                             owner: "\(device) dma-map-sg $\(sg.key) segment \(i) \(hex(s.address.rawValue)) size \(s.length)"))
                        }
                        continue
                    }
                    out.append(.init(first: r.address.rawValue, last: r.last, owner: "\(device) dma-map-sg\(label) \(hex(r.address.rawValue)) size \(r.size)"))
                case .coherent:
                    out.append(.init(first: r.address.rawValue, last: r.last, owner: "\(device) dma-alloc-coherent\(label) \(hex(r.address.rawValue)) size \(r.size)"))
                case .page:
                    out.append(.init(first: r.address.rawValue, last: r.last,
                                     owner: "\(device) dma-map-page\(label) \(hex(r.address.rawValue)) size \(r.size) (buffer \(r.paddr)\(r.bounced ? ", bounced" : ""))"))
                }
            }
        }
        for (iova, m) in (mapped[domain.serial] ?? [:]).sorted(by: { $0.key < $1.key }) where m.length > 0 {
            out.append(.init(first: iova, last: iova &+ m.length &- 1, owner: "map step \(hex(iova)) +\(hex(m.length)) → \(hex(m.paddr))"))
        }
        if let c = container, c.domains.contains(where: { $0 === domain }) {
            for m in c.mappings where m.iommuMapped && m.length > 0 {
                out.append(.init(first: m.iova.rawValue, last: m.iova.rawValue &+ m.length &- 1, owner: "vfio-map \(hex(m.iova.rawValue)) +\(hex(m.length)) vaddr \(m.vaddr)"))
            }
        }
        return out.sorted { $0.first < $1.first }
    }

    // MARK: Entries

    static func protText(_ t: WalkTranslation) -> String {
        let s = (t.readable ? "r" : "") + (t.writable ? "w" : "")
        return (s.isEmpty ? "-" : s) + (t.privilegedOnly ? " (privileged only)" : "")
    }

    /// Each walked leaf as `mapping` ranges (inside a buffer, or with no record) and
    /// `granule-rounding` ranges (the rest of a leaf that holds some buffer).
    func leafEntries(_ leaves: [WalkedLeaf], buffers: [ReachBuffer], domain: String?, via: String) -> [DeviceReach.Entry] {
        var out: [DeviceReach.Entry] = []
        for leaf in leaves {
            let lf = leaf.iova.rawValue
            let ll = lf &+ (leaf.length &- 1)
            let pa = leaf.translation.physicalAddress.rawValue
            let prot = Self.protText(leaf.translation)
            func entry(_ first: UInt64, _ last: UInt64, _ reason: DeviceReach.Reason, _ owner: String?, _ detail: String) {
                out.append(.init(first: pa &+ (first &- lf), last: pa &+ (last &- lf), reason: reason, iova: first, domain: domain,
                                 granule: leaf.length, prot: prot, owner: owner, via: via, detail: detail))
            }
            let inside = buffers.filter { $0.first <= ll && $0.last >= lf }
            guard !inside.isEmpty else {
                entry(lf, ll, .mapping, nil, "a \(formatByteSize(leaf.length)) leaf with no buffer record (nothing the workload or a driver asked for)")
                continue
            }
            // Walk the leaf: covered stretches are the buffers', gaps are beyond them.
            var cursor = lf
            var done = false
            let nearest = inside.map(\.owner).joined(separator: "; ")
            for b in inside.sorted(by: { $0.first < $1.first }) where !done {
                let bf = max(b.first, lf)
                let bl = min(b.last, ll)
                if bl < cursor { continue }
                if bf > cursor {
                    entry(cursor, bf &- 1, .granuleRounding, nearest,
                          "beyond the buffer: the rest of the \(formatByteSize(leaf.length)) leaf that maps it")
                }
                entry(max(bf, cursor), bl, .mapping, b.owner, "the buffer, in a \(formatByteSize(leaf.length)) leaf")
                if bl == ll { done = true } else { cursor = bl &+ 1 }
            }
            if !done {
                entry(cursor, ll, .granuleRounding, nearest, "beyond the buffer: the rest of the \(formatByteSize(leaf.length)) leaf that maps it")
            }
        }
        return out
    }

    /// TLB entries of the device's context whose translation the table no longer backs (or backs
    /// with fewer rights): the parts of each entry's range not translated identically now.
    func staleEntries(_ tlb: [TLBEntry], leaves: [WalkedLeaf], via: String) -> [DeviceReach.Entry] {
        var out: [DeviceReach.Entry] = []
        for e in tlb {
            let size = UInt64(1) << UInt64(e.leafShift)
            let first = e.iova.rawValue
            let last = first &+ (size &- 1)
            let delta = e.physicalAddress.rawValue &- first
            // Current leaves overlapping the entry that translate the same way with at least its rights.
            var backed: [(UInt64, UInt64)] = []
            var changed: [String] = []
            for leaf in leaves where leaf.iova.rawValue <= last && leaf.iova.rawValue &+ (leaf.length &- 1) >= first {
                let t = leaf.translation
                let same = t.physicalAddress.rawValue &- leaf.iova.rawValue == delta
                let rights = (!e.readable || t.readable) && (!e.writable || t.writable)
                if same && rights {
                    backed.append((max(first, leaf.iova.rawValue), min(last, leaf.iova.rawValue &+ (leaf.length &- 1))))
                } else {
                    changed.append(same ? "now \(Self.protText(t))" : "now maps to \(t.physicalAddress)")
                }
            }
            var cursor = first
            var covered = false
            var gaps: [(UInt64, UInt64)] = []
            for (bf, bl) in backed.sorted(by: { $0.0 < $1.0 }) {
                if bf > cursor { gaps.append((cursor, bf &- 1)) }
                if bl >= last { covered = true; break }
                cursor = max(cursor, bl &+ 1)
            }
            if !covered { gaps.append((cursor, last)) }
            let state = (e.mappingRemoved ? "mapping removed" : "table changed") + (e.invalidationPending ? ", invalidation posted, not synced" : ", not invalidated")
            for (gf, gl) in gaps {
                out.append(.init(first: gf &+ delta, last: gl &+ delta, reason: .staleTLB, iova: gf, domain: nil, granule: size,
                                 prot: (e.readable ? "r" : "") + (e.writable ? "w" : ""), owner: nil, via: via,
                                 detail: "TLB entry ctx \(e.context) \(e.iova) → \(e.physicalAddress) (\(formatByteSize(size))): \(state)"
                                    + (changed.isEmpty ? "; the table no longer maps it" : "; the table \(changed.joined(separator: ", "))")))
            }
        }
        return out
    }

    /// A virtio-iommu endpoint: the device's domain record (checked against its tables by the
    /// virtio checker), bypass when unattached with bypass on or in a bypass domain.
    func virtioReach(_ name: String, mask: UInt64, into out: inout DeviceReach) {
        guard let v = virtio, let e = v.device.snapshot.endpoints.first(where: { $0.name == name }) else {
            out.routes.append("virtio-iommu endpoint not added: reaches nothing")
            return
        }
        let via = "virtio-iommu endpoint \(e.id)"
        guard let domainID = e.domain, let d = v.device.snapshot.domains.first(where: { $0.id == domainID }) else {
            if e.bypassing {
                out.routes.append("\(via): unattached, bypass on — bypass")
                out.entries.append(bypassEntry(mask: mask, via: via, why: "unattached endpoint with bypass"))
            } else {
                out.routes.append("\(via): unattached, bypass off — reaches nothing")
            }
            return
        }
        if d.isBypass {
            out.routes.append("\(via): bypass domain \(d.id) — bypass")
            out.entries.append(bypassEntry(mask: mask, via: via, why: "virtio bypass domain \(d.id)"))
            return
        }
        let granule = d.table?.granule.bytes
        out.routes.append("\(via): domain \(d.id) (\(d.table?.description ?? "?")) → core domain#\(d.coreDomainSerial)")
        for m in d.mappings where !m.prot.isEmpty {
            let prot = (m.prot.contains(.read) ? "r" : "") + (m.prot.contains(.write) ? "w" : "")
            out.entries.append(.init(first: m.phys, last: m.phys &+ (m.last &- m.first), reason: .mapping, iova: m.first,
                                     domain: "virtio domain \(d.id) (core domain#\(d.coreDomainSerial))", granule: granule, prot: prot,
                                     owner: "virtio MAP [0x\(String(m.first, radix: 16)), 0x\(String(m.last, radix: 16))]", via: via,
                                     detail: "a mapping of the endpoint's domain"))
        }
    }

    /// Sorted by physical address; neighbours that continue each other (same reason, owner,
    /// domain, rights, leaf size, contiguous in both IOVA and physical space) become one entry.
    static func merged(_ entries: [DeviceReach.Entry]) -> [DeviceReach.Entry] {
        let order = DeviceReach.Reason.allCases
        let sorted = entries.sorted {
            ($0.first, order.firstIndex(of: $0.reason)!, $0.iova ?? 0) < ($1.first, order.firstIndex(of: $1.reason)!, $1.iova ?? 0)
        }
        var out: [DeviceReach.Entry] = []
        for e in sorted {
            if var p = out.last, p.reason == e.reason, p.reason != .staleTLB, p.owner == e.owner, p.domain == e.domain, p.prot == e.prot,
               p.granule == e.granule, p.via == e.via, p.last &+ 1 == e.first, let pi = p.iova, let ei = e.iova, pi &+ (p.last &- p.first) &+ 1 == ei {
                p.last = e.last
                out[out.count - 1] = p
                continue
            }
            if out.contains(e) { continue }
            out.append(e)
        }
        return out
    }
}
