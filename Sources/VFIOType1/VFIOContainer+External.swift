import IOMMUBase
import IOMMUCore
import PhysicalMemory

/// An emulated-device (mdev-like) driver registered with a container: it pins guest pages by
/// IOVA, reads and writes guest memory by IOVA, and is told when guest memory is unmapped.
///
/// Linux: a `vfio_device` whose ops have `dma_unmap` (modern), or a registered
/// `VFIO_IOMMU_NOTIFY_DMA_UNMAP` notifier (4.10–5.19); `vfio_pin_pages`, `vfio_unpin_pages`,
/// `vfio_dma_rw`.
///
/// The handler is called with no VFIO lock held, once per unmap round, with the span of the
/// mappings about to be removed; it must unpin every page it holds in that span (it may take
/// its own locks and call `unpinPages` from inside). A driver that never unpins makes the
/// UNMAP fail with EBUSY (mapping intact) after 10 retries, with a warning naming it.
public final class VFIOEmulatedDevice: Sendable, CustomStringConvertible {
    /// The number this device is reported by in warnings (`device#N`).
    public let id: DeviceID
    public let name: String
    /// The container it is registered with (a strong reference: a device outliving its
    /// container's last user must still answer with an errno, not crash; `close()` and
    /// `unregister()` break the cycle).
    public let container: VFIOContainer
    let handler: @Sendable (VFIOEmulatedDevice, IOVA, UInt64) -> Void

    init(id: DeviceID, name: String, container: VFIOContainer, handler: @escaping @Sendable (VFIOEmulatedDevice, IOVA, UInt64) -> Void) {
        self.id = id
        self.name = name
        self.container = container
        self.handler = handler
    }

    /// Pins `count` pages from `iova` (page aligned) and returns their physical addresses.
    /// See `VFIOContainer.pinPages`.
    public func pinPages(iova: IOVA, count: Int, prot: IOMMUProt) throws(IOMMUError) -> [PhysAddr] {
        try container.pinPages(device: self, iova: iova, count: count, prot: prot)
    }

    /// Drops one pin from each of `count` pages from `iova`.
    public func unpinPages(iova: IOVA, count: Int) { container.unpinPages(device: self, iova: iova, count: count) }

    /// Reads guest memory by IOVA. Linux: `vfio_dma_rw(write = false)`.
    public func dmaRead(iova: IOVA, count: Int) throws(IOMMUError) -> [UInt8] {
        try container.dmaRead(iova: iova, count: count)
    }

    /// Writes guest memory by IOVA. Linux: `vfio_dma_rw(write = true)`.
    public func dmaWrite(iova: IOVA, bytes: [UInt8]) throws(IOMMUError) {
        try container.dmaWrite(iova: iova, bytes: bytes)
    }

    /// Stops notifications. Pages it still pins stay pinned.
    public func unregister() { container.unregister(self) }

    public var description: String { "\(name) (\(id))" }
}

extension VFIOContainer {
    /// Registers an emulated-device driver with its `dma_unmap` handler.
    public func registerEmulatedDevice(
        name: String, onUnmap handler: @escaping @Sendable (VFIOEmulatedDevice, IOVA, UInt64) -> Void
    ) -> VFIOEmulatedDevice {
        state.withLock { s in
            let id = s.nextDeviceID
            s.nextDeviceID += 1
            let device = VFIOEmulatedDevice(id: DeviceID(id), name: name, container: self, handler: handler)
            s.devices[id] = Registration(device: device)
            return device
        }
    }

    func unregister(_ device: VFIOEmulatedDevice) {
        _ = state.withLock { $0.devices.removeValue(forKey: device.id.rawValue) }
    }

    /// The registered emulated device with this ID (to name a warning's `device#N`).
    public func emulatedDevice(_ id: DeviceID) -> VFIOEmulatedDevice? {
        state.withLock { $0.devices[id.rawValue]?.device }
    }

    /// Linux `vfio_pin_pages` → `vfio_iommu_type1_pin_pages`.
    ///
    /// Order: count 0 → EINVAL; count > 512 → E2BIG; iova unaligned → EINVAL; no IOMMU type →
    /// EINVAL; v1 → EACCES; a vaddr invalidated → EBUSY (+warning); device not registered →
    /// EINVAL; then per page: no mapping → EINVAL; mapping lacks `prot` → EPERM; device memory
    /// → EINVAL; pin errors (EFAULT); over the locked-memory limit when the container has no
    /// IOMMU domain (the only case where external pins are charged) → ENOMEM. A failure
    /// releases every page pinned by this call.
    public func pinPages(device: VFIOEmulatedDevice, iova: IOVA, count: Int, prot: IOMMUProt) throws(IOMMUError) -> [PhysAddr] {
        guard count > 0 else { throw IOMMUError(.invalidArgument, address: iova.rawValue) }
        guard count <= VFIOUAPI.pinPagesMaxEntries else {
            throw IOMMUError(.invalidArgument, address: iova.rawValue, length: UInt64(count), code: .argumentListTooLong)
        }
        guard iova.isAligned(to: .size4K) else { throw IOMMUError(.unaligned, address: iova.rawValue) }
        return try state.withLock { s throws(IOMMUError) -> [PhysAddr] in
            guard let type = s.type else { throw IOMMUError(.invalidArgument) }
            guard type == .type1v2 else { throw IOMMUError(.notPermitted, address: iova.rawValue, code: .permissionDenied) }
            if s.vaddrInvalidCount > 0 {
                warnings.warn(.vfioPinWhileVaddrInvalid(iova: iova))
                throw IOMMUError(.busy, address: iova.rawValue)
            }
            guard s.devices[device.id.rawValue] != nil else { throw IOMMUError(.invalidArgument) }
            let doAccounting = s.domains.isEmpty
            var result: [PhysAddr] = []
            result.reserveCapacity(count)
            var done: [UInt64] = []
            do throws(IOMMUError) {
                for page in 0..<count {
                    let (pageIOVA, overflow) = iova.rawValue.addingReportingOverflow(UInt64(page) << 12)
                    guard !overflow, let index = s.index(containing: pageIOVA), s.mappings[index].last - pageIOVA >= 0xFFF else {
                        throw IOMMUError(.invalidArgument, address: pageIOVA)
                    }
                    guard s.mappings[index].prot.isSuperset(of: prot) else {
                        throw IOMMUError(.notPermitted, address: pageIOVA)
                    }
                    if var pin = s.mappings[index].pins[pageIOVA] {
                        pin.total += 1
                        pin.byDevice[device.id.rawValue, default: 0] += 1
                        s.mappings[index].pins[pageIOVA] = pin
                        result.append(PhysAddr(pin.paddr))
                    } else {
                        let m = s.mappings[index]
                        let va = VirtAddr(m.vaddr + (pageIOVA - m.iova))
                        if let region = m.process.region(containing: va), case .device = region.backing {
                            throw IOMMUError(.invalidArgument, address: pageIOVA)
                        }
                        let (paddr, _) = try m.process.pinContiguous(va, maxCount: 1, write: prot.contains(.write))
                        if doAccounting {
                            do throws(IOMMUError) {
                                try m.process.accountLocked(pages: 1)
                            } catch {
                                m.process.unpin(first: paddr, count: 1)
                                warnings.warn(.vfioLockedMemoryLimitExceeded(limitBytes: m.process.lockedMemoryLimit))
                                throw error
                            }
                            s.mappings[index].lockedPages += 1
                        }
                        s.mappings[index].pins[pageIOVA] = ExternalPin(
                            paddr: paddr.rawValue, total: 1, byDevice: [device.id.rawValue: 1], host: m.process)
                        markDirtyLocked(&s, index, iova: pageIOVA)
                        result.append(paddr)
                    }
                    done.append(pageIOVA)
                }
            } catch {
                for pageIOVA in done { releasePinLocked(&s, device: device.id.rawValue, iova: pageIOVA, accounting: doAccounting) }
                throw error
            }
            return result
        }
    }

    /// Linux `vfio_unpin_pages` → `vfio_iommu_type1_unpin_pages`. Misuse (v1, count 0 or > 512,
    /// pages not pinned by this device) is a `vfioUnpinPagesMisuse` warning.
    public func unpinPages(device: VFIOEmulatedDevice, iova: IOVA, count: Int) {
        guard count > 0, count <= VFIOUAPI.pinPagesMaxEntries else {
            warnings.warn(.vfioUnpinPagesMisuse(iova: iova, count: count))
            return
        }
        state.withLock { s in
            guard s.type == .type1v2 else {
                warnings.warn(.vfioUnpinPagesMisuse(iova: iova, count: count))
                return
            }
            let doAccounting = s.domains.isEmpty
            var processed = 0
            for page in 0..<count {
                let (pageIOVA, overflow) = iova.rawValue.addingReportingOverflow(UInt64(page) << 12)
                guard !overflow, let index = s.index(containing: pageIOVA) else { break }
                if s.mappings[index].pins[pageIOVA]?.byDevice[device.id.rawValue] != nil {
                    releasePinLocked(&s, device: device.id.rawValue, iova: pageIOVA, accounting: doAccounting)
                    let writable = s.mappings[index].prot.contains(.write)
                    if writable { markDirtyLocked(&s, index, iova: pageIOVA) }
                }
                processed += 1
            }
            if processed != count { warnings.warn(.vfioUnpinPagesMisuse(iova: iova, count: count)) }
        }
    }

    /// Drops one pin of `device` on the page at `iova`; at zero the page is unpinned (and
    /// uncharged when `accounting`).
    func releasePinLocked(_ s: inout State, device: UInt32, iova: UInt64, accounting: Bool) {
        guard let index = s.index(containing: iova), var pin = s.mappings[index].pins[iova] else { return }
        if let mine = pin.byDevice[device] {
            pin.byDevice[device] = mine == 1 ? nil : mine - 1
        }
        pin.total -= 1
        if pin.total > 0 {
            s.mappings[index].pins[iova] = pin
            return
        }
        s.mappings[index].pins[iova] = nil
        pin.host.unpin(first: PhysAddr(pin.paddr), count: 1)
        if accounting {
            s.mappings[index].process.unaccountLocked(pages: 1)
            s.mappings[index].lockedPages -= 1
        }
    }

    /// Linux `vfio_dma_rw` (read). Errors: length 0 → EINVAL; vaddr invalidated → EBUSY; no mapping → EINVAL;
    /// mapping not readable → EPERM; copy failure → EFAULT.
    public func dmaRead(iova: IOVA, count: Int) throws(IOMMUError) -> [UInt8] {
        var out: [UInt8] = []
        try dmaAccess(iova: iova, count: count, write: false) { (m, va, offset, chunk) throws(IOMMUError) in
            out += try m.process.read(va, count: chunk)
        }
        return out
    }

    /// Linux `vfio_dma_rw` (write). Errors as `dmaRead`, EPERM for a mapping not writable;
    /// written pages are marked dirty while tracking.
    public func dmaWrite(iova: IOVA, bytes: [UInt8]) throws(IOMMUError) {
        try dmaAccess(iova: iova, count: bytes.count, write: true) { (m, va, offset, chunk) throws(IOMMUError) in
            try m.process.write(va, Array(bytes[offset..<(offset + chunk)]))
        }
    }

    private func dmaAccess(
        iova: IOVA, count: Int, write: Bool, _ body: (Mapping, VirtAddr, Int, Int) throws(IOMMUError) -> Void
    ) throws(IOMMUError) {
        guard count > 0 else { throw IOMMUError(.invalidArgument, address: iova.rawValue) }
        try state.withLock { s throws(IOMMUError) in
            guard s.type != nil else { throw IOMMUError(.invalidArgument) }
            if s.vaddrInvalidCount > 0 { throw IOMMUError(.busy, address: iova.rawValue) }
            var done = 0
            while done < count {
                let (address, overflow) = iova.rawValue.addingReportingOverflow(UInt64(done))
                guard !overflow, let index = s.index(containing: address) else {
                    throw IOMMUError(.invalidArgument, address: address)
                }
                let m = s.mappings[index]
                if write ? !m.prot.contains(.write) : !m.prot.contains(.read) {
                    throw IOMMUError(.notPermitted, address: address)
                }
                let inMapping = m.last - address
                let chunk = inMapping >= UInt64(count - done - 1) ? count - done : Int(inMapping) + 1
                let va = VirtAddr(m.vaddr + (address - m.iova))
                try body(m, va, done, chunk)
                if write {
                    var page = address & ~UInt64(0xFFF)
                    while page <= address + UInt64(chunk - 1) {
                        markDirtyLocked(&s, index, iova: page)
                        page += 0x1000
                    }
                }
                done += chunk
            }
        }
    }
}
