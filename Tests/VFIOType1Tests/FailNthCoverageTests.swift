import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// The remaining VFIO entry points under `ReliabilityTests.sweep` (which already covers
/// SET_CONTAINER + SET_IOMMU, MAP_DMA, UNMAP_DMA, external pinning and lost notifications).
/// Operations with no fallible step must succeed at n = 1 without consulting the injector: that
/// is asserted, so an allocation added to one of them later shows up here.
extension ReliabilityTests {
    /// A type1v2 container with groups "a" and "b", 32 KiB mapped at 1 MiB.
    func mappedContainer(_ h: VFIOHarness) throws -> VFIOContainer {
        let (c, _) = try h.container(groups: ["a", "b"])
        try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
        return c
    }

    /// The open VFIO group of device `name` (container `c` holds it).
    func group(_ h: VFIOHarness, _ c: VFIOContainer, _ name: String) -> VFIOGroup? {
        let id = h.core.groupID(of: h.core.device(named: name)!)!
        return c.state.withLock { s in
            s.groups.first { g in
                if case .iommu(let groupID) = g.kind { return groupID == id }
                return false
            }
        }
    }

    func expectInfallible(_ kind: Injector, _ label: String, setUp: (VFIOHarness) throws -> VFIOContainer,
                          attempt: (VFIOHarness, VFIOContainer) -> Errno?,
                          sourceLocation: SourceLocation = #_sourceLocation) throws {
        let n = try sweep(kind, label, setUp: setUp, attempt: attempt)
        #expect(n == 1, "\(label) [\(kind)] consulted the injector", sourceLocation: sourceLocation)
    }

    /// A group joining a container that already has mappings: ownership (blocking domain), then
    /// an attach to the container's domain (or a new domain and a replay of every mapping, when
    /// the existing one cannot take it); on failure the group is not in the container and the
    /// mappings and charges are unchanged.
    @Test(arguments: Injector.allCases)
    func secondGroupJoinsAMappedContainer(_ kind: Injector) throws {
        try sweep(kind, "SET_CONTAINER of a second group (mapped container)", setUp: { h in
            let (c, _) = try h.container(groups: ["a"])
            try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
            _ = try h.addGroup("b")
            return c
        }, attempt: { h, c in
            join(h, c, device: "b")
        }, unchanged: { h, c in
            let id = h.core.groupID(of: h.core.device(named: "b")!)!
            #expect(h.core.groupInfo(id: id)?.owner == nil, "the group is released again")
            #expect(c.state.withLock { $0.groups.count } == 1)
        })
    }

    @Test(arguments: Injector.allCases)
    func infallibleVFIOOperations(_ kind: Injector) throws {
        try expectInfallible(kind, "UNMAP_DMA (UNMAP_ALL)", setUp: mappedContainer) { h, c in
            let result = errno { try c.unmapDMA(iova: IOVA(0), length: 0, all: true) }
            #expect(c.mappings.isEmpty && h.host.totalPins == 0)
            return result
        }
        try expectInfallible(kind, "UNMAP_DMA+MAP_DMA (VADDR update)", setUp: mappedContainer) { h, c in
            if let e = errno({ try c.unmapDMA(iova: IOVA(0x10_0000), length: 0x8000, updateVaddr: true) }) { return e }
            let vaddr: VirtAddr
            do { vaddr = try h.buffer(0x8000) } catch { return Errno(rawValue: 12) }
            return errno { try c.mapDMA(iova: IOVA(0x10_0000), vaddr: vaddr, length: 0x8000, read: false, write: false, updateVaddr: true) }
        }
        try expectInfallible(kind, "DIRTY_PAGES start/get/stop", setUp: mappedContainer) { h, c in
            let bitmapVA: VirtAddr
            do { bitmapVA = try h.buffer(0x1000) } catch { return Errno(rawValue: 12) }
            if let e = errno({ try c.startDirtyTracking() }) { return e }
            if let e = errno({ try c.dirtyBitmap(iova: IOVA(0x10_0000), length: 0x8000,
                                                 bitmap: VFIODirtyBitmap(pageSize: 0x1000, size: 8, data: bitmapVA)) }) { return e }
            #expect((try? h.host.read(bitmapVA, count: 1)) == [0xFF], "IOMMU-backed groups report every page dirty")
            return errno { try c.stopDirtyTracking() }
        }
        try expectInfallible(kind, "GROUP_UNSET_CONTAINER", setUp: mappedContainer) { h, c in
            let result = errno { try group(h, c, "b")!.unsetContainer() }
            #expect(c.state.withLock { $0.groups.count } == 1)
            return result
        }
        try expectInfallible(kind, "group close", setUp: mappedContainer) { h, c in
            group(h, c, "a")!.close()
            group(h, c, "b")!.close()
            #expect(c.domains.isEmpty && h.host.totalPins == 0 && h.host.lockedPages == 0)
            return nil
        }
        try expectInfallible(kind, "container close", setUp: mappedContainer) { h, c in
            c.close()
            #expect(h.host.totalPins == 0 && h.host.lockedPages == 0)
            return nil
        }
    }

    @Test(arguments: [Injector.pin])
    func infallibleExternalPinningOperations(_ kind: Injector) throws {
        let setUp: (VFIOHarness) throws -> VFIOContainer = { h in
            let c = h.vfio.openContainer(process: h.host)
            try h.vfio.openEmulatedGroup().setContainer(c)
            try c.setIOMMU(.type1v2)
            try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
            let device = c.registerEmulatedDevice(name: "vgpu") { device, iova, length in
                device.unpinPages(iova: iova, count: Int(length >> 12))
            }
            _ = try device.pinPages(iova: IOVA(0x10_1000), count: 2, prot: [.read, .write])
            return c
        }
        try expectInfallible(kind, "unpinPages", setUp: setUp) { h, c in
            c.emulatedDevice(DeviceID(1))!.unpinPages(iova: IOVA(0x10_1000), count: 2)
            #expect(h.host.totalPins == 0)
            return nil
        }
        try expectInfallible(kind, "emulated dmaWrite/dmaRead", setUp: setUp) { _, c in
            let device = c.emulatedDevice(DeviceID(1))!
            if let e = errno({ try device.dmaWrite(iova: IOVA(0x10_1000), bytes: [1, 2, 3]) }) { return e }
            #expect((try? device.dmaRead(iova: IOVA(0x10_1000), count: 3)) == [1, 2, 3])
            return nil
        }
        try expectInfallible(kind, "unregister", setUp: setUp) { _, c in
            c.emulatedDevice(DeviceID(1))!.unregister()
            #expect(c.emulatedDevice(DeviceID(1)) == nil)
            return nil
        }
    }
}
