import IOMMUBase

// MARK: - Domains

extension IOMMUCore {
    /// Allocates a domain of `type` from the driver of the device's IOMMU, for a user (VFIO,
    /// iommufd, a test). Page sizes are final after the first attach.
    ///
    /// Linux: `iommu_domain_alloc()` / `iommu_paging_domain_alloc(dev)`.
    /// - Throws: `noSuchDevice` (ENODEV) if the device is not probed behind an IOMMU; the
    ///   driver's error (e.g. `notSupported`).
    public func allocateDomain(type: IOMMUDomainType, for id: DeviceID) throws(IOMMUError) -> IOMMUDomain {
        try state.withLock { s throws(IOMMUError) in
            guard let record = s.devices[id], record.probeState == .probed, let instance = record.instance,
                let driver = s.instances[instance]?.driver
            else { throw IOMMUError(.noSuchDevice, device: id) }
            return try makeDomain(type: type, driver: driver, device: record.info, &s)
        }
    }

    /// Frees a user domain. Linux: `iommu_domain_free()`.
    /// - Throws: `busy` (EBUSY) if a group is attached to it (differs from Linux, which would
    ///   free it under the group's feet), or it is a group's default or blocking domain.
    public func freeDomain(_ domain: IOMMUDomain) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            for group in s.groups.values
            where group.domain === domain || group.defaultDomain === domain || group.blockingDomain === domain {
                throw IOMMUError(.busy)
            }
            freeDomainObject(domain)
        }
    }

    // MARK: - Attach and detach

    /// Attaches the device's group — which must hold exactly this one device — to `domain`.
    ///
    /// Linux: `iommu_attach_device()`.
    /// - Throws: `noSuchDevice` (ENODEV) if the device has no group; `invalidArgument` (EINVAL)
    ///   if the group has more than one device or the domain belongs to another driver;
    ///   `busy` (EBUSY) if the group is attached to another non-default, non-blocking domain;
    ///   `badAddress` (EFAULT, with an `iommuPagesCannotRepresentCPUPages` warning) if the
    ///   domain's smallest page is larger than the CPU page; the driver's error. On failure
    ///   nothing changed.
    public func attachDevice(_ domain: IOMMUDomain, to id: DeviceID) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let serial = s.devices[id]?.groupSerial else { throw IOMMUError(.noSuchDevice, device: id) }
            guard s.groups[serial]!.devices.count == 1 else { throw IOMMUError(.invalidArgument, device: id) }
            try attachGroupLocked(&s, serial, domain)
        }
    }

    /// Attaches every device of the group with this ID to `domain`.
    ///
    /// Linux: `iommu_attach_group()`.
    /// - Throws: `noSuchDevice` for an unknown group; otherwise as `attachDevice`, without the
    ///   one-device rule.
    public func attachGroup(_ domain: IOMMUDomain, toGroup groupID: Int) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let serial = s.groups.values.first(where: { $0.id == groupID })?.serial else {
                throw IOMMUError(.noSuchDevice)
            }
            try attachGroupLocked(&s, serial, domain)
        }
    }

    /// Detaches `domain` from the device's (one-device) group, returning the group to its core
    /// domain: the blocking domain if the group is claimed for user-space DMA, else its default
    /// domain. Emits `detach_device_from_domain`.
    ///
    /// Linux: `iommu_detach_device()`. Misuse (wrong domain, multi-device group) is a warning
    /// and changes nothing.
    public func detachDevice(_ domain: IOMMUDomain, from id: DeviceID) {
        state.withLock { s in
            guard let serial = s.devices[id]?.groupSerial else { return }
            let group = s.groups[serial]!
            guard group.domain === domain else {
                warnings.warn(.detachOfDomainNotAttached(device: id))
                return
            }
            guard group.devices.count == 1 else {
                warnings.warn(.detachFromMultiDeviceGroup(device: id, deviceCount: group.devices.count))
                return
            }
            if trace.isEnabled { trace.record(.detachDeviceFromDomain(device: s.devices[id]!.info.name)) }
            setCoreDomain(&s, serial)
        }
    }

    /// Detaches `domain` from the group with this ID (back to its core domain).
    /// Linux: `iommu_detach_group()`.
    public func detachGroup(_ domain: IOMMUDomain, fromGroup groupID: Int) {
        state.withLock { s in
            guard let serial = s.groups.values.first(where: { $0.id == groupID })?.serial else { return }
            guard s.groups[serial]!.domain === domain else { return }
            if trace.isEnabled {
                for id in s.groups[serial]!.devices {
                    trace.record(.detachDeviceFromDomain(device: s.devices[id]!.info.name))
                }
            }
            setCoreDomain(&s, serial)
        }
    }

    /// Linux: `__iommu_attach_group()`.
    func attachGroupLocked(_ s: inout RegistryState, _ serial: UInt64, _ domain: IOMMUDomain) throws(IOMMUError) {
        let group = s.groups[serial]!
        guard domain.driver === group.driver, !domain.isFreed else { throw IOMMUError(.invalidArgument) }
        if let current = group.domain, current !== group.defaultDomain, current !== group.blockingDomain,
            current !== domain
        {
            throw IOMMUError(.busy)
        }
        try setGroupDomain(&s, serial, domain)
    }

    /// Attaches every device of the group to `domain`; on a failure the devices already moved go
    /// back to the previous domain. Linux: `__iommu_group_set_domain_internal()`.
    func setGroupDomain(_ s: inout RegistryState, _ serial: UInt64, _ domain: IOMMUDomain) throws(IOMMUError) {
        let group = s.groups[serial]!
        if group.domain === domain { return }
        let checkPageSize = domain !== group.blockingDomain
        var moved: [DeviceID] = []
        for id in group.devices {
            do throws(IOMMUError) {
                try attachDeviceLocked(&s, id, to: domain, checkPageSize: checkPageSize)
                moved.append(id)
            } catch {
                for movedID in moved { restoreAttachment(&s, movedID, previous: group.domain, failed: domain) }
                throw error
            }
        }
        s.groups[serial]!.domain = domain
    }

    /// Returns a group to its core domain. Linux: `__iommu_group_set_core_domain()`.
    func setCoreDomain(_ s: inout RegistryState, _ serial: UInt64) {
        let group = s.groups[serial]!
        let target = group.owner != nil ? group.blockingDomain : group.defaultDomain
        guard let target else {
            for id in group.devices {
                if let attached = s.devices[id]!.attached {
                    group.driver.detachDevice(s.devices[id]!.info, from: attached)
                }
                s.devices[id]!.attached = nil
            }
            s.groups[serial]!.domain = nil
            return
        }
        do throws(IOMMUError) {
            try setGroupDomain(&s, serial, target)
        } catch {
            warnings.warn(.coreDomainAttachFailed(group: group.id, errno: error.code.rawValue))
        }
    }

    /// Puts a device back on `previous` after a failed move to `failed`.
    private func restoreAttachment(_ s: inout RegistryState, _ id: DeviceID, previous: IOMMUDomain?, failed: IOMMUDomain) {
        let info = s.devices[id]!.info
        let driver = s.groups[s.devices[id]!.groupSerial!]!.driver
        if let previous {
            do throws(IOMMUError) {
                try driver.attachDevice(info, to: previous)
                s.devices[id]!.attached = previous
            } catch {
                warnings.warn(.attachRollbackFailed(device: id, errno: error.code.rawValue))
                driver.detachDevice(info, from: failed)
                s.devices[id]!.attached = nil
            }
        } else {
            driver.detachDevice(info, from: failed)
            s.devices[id]!.attached = nil
        }
    }

    func finaliseIfNeeded(_ domain: IOMMUDomain, for info: IOMMUDeviceInfo) throws(IOMMUError) {
        guard !domain.isFinalised else { return }
        try domain.driver.finaliseDomain(domain, for: info)
        domain.markFinalised()
    }

    /// Attaches one device, then checks that the (now final) page sizes can represent CPU pages.
    ///
    /// Linux: `__iommu_attach_device()` plus the proposed `iommu_check_page_size()` (thread
    /// "Move IOMMU pagesize check to attach_device"): the check runs *after* the driver's
    /// finalise and attach steps, and a failure re-attaches the previous domain and throws
    /// EFAULT. A paging domain passes if it supports the CPU page size or anything smaller;
    /// otherwise only if it opted in with `allowsLargePages` and the device is trusted.
    /// A device with a DIRECT reserved region cannot be put on a blocked or blocking domain
    /// (EINVAL, `deviceRequiresDirectMapping`; Linux 6.12 `require_direct`).
    func attachDeviceLocked(
        _ s: inout RegistryState, _ id: DeviceID, to domain: IOMMUDomain, checkPageSize: Bool
    ) throws(IOMMUError) {
        let record = s.devices[id]!
        let info = record.info
        let driver = domain.driver
        if domain.type == .blocked || domain === record.groupSerial.flatMap({ s.groups[$0]?.blockingDomain }) {
            // Linux 6.12 `require_direct`: firmware says this device's DIRECT regions must stay
            // identity mapped, so it may not be blocked (e.g. claimed by VFIO).
            if deviceRegions(&s, id).contains(where: { $0.type == .direct }) {
                warnings.warn(.deviceRequiresDirectMapping(device: id))
                throw IOMMUError(.invalidArgument, device: id)
            }
        }
        try finaliseIfNeeded(domain, for: info)
        try driver.attachDevice(info, to: domain)
        if checkPageSize && domain.type.isPaging {
            let bits = domain.pageSizes.rawValue
            let cpuPage = configuration.cpuPageSize
            let representable = bits == 0 || bits & (cpuPage.bytes | cpuPage.mask) != 0
            let exempt = domain.allowsLargePages && !info.isUntrusted
            if !representable && !exempt {
                warnings.warn(.iommuPagesCannotRepresentCPUPages(
                    device: id, smallestIOMMUPageSize: UInt64(1) << UInt64(bits.trailingZeroBitCount),
                    cpuPageSize: cpuPage.bytes))
                restoreAttachment(&s, id, previous: record.attached, failed: domain)
                throw IOMMUError(.badAddress, device: id)
            }
        }
        s.devices[id]!.attached = domain
        if trace.isEnabled { trace.record(.attachDeviceToDomain(device: info.name)) }
    }

    // MARK: - DMA ownership

    /// Claims the group with this ID for user-space DMA: the group moves to its blocking domain
    /// until the owner attaches its own domain.
    ///
    /// Linux: `iommu_group_claim_dma_owner()`.
    /// - Throws: `noSuchDevice` for an unknown group; `notPermitted` (EPERM) if the group already
    ///   has users (a bound DMA-API driver or another claim); `busy` (EBUSY) if the group is not
    ///   on its default domain; `invalidArgument` (EINVAL) if a member has a DIRECT reserved
    ///   region (Linux 6.12 `require_direct`).
    public func claimDMAOwnership(ofGroup groupID: Int, owner: DMAOwner) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let serial = s.groups.values.first(where: { $0.id == groupID })?.serial else {
                throw IOMMUError(.noSuchDevice)
            }
            guard s.groups[serial]!.ownerCount == 0 else { throw IOMMUError(.notPermitted) }
            try takeOwnership(&s, serial, owner)
            s.groups[serial]!.ownerCount = 1
        }
    }

    /// Releases a group claim: back to the default domain. Linux: `iommu_group_release_dma_owner()`.
    public func releaseDMAOwnership(ofGroup groupID: Int) {
        state.withLock { s in
            guard let serial = s.groups.values.first(where: { $0.id == groupID })?.serial else { return }
            releaseOwnership(&s, serial)
        }
    }

    /// Claims the device's group for user-space DMA on behalf of `owner`; several devices of one
    /// group may be claimed by the same owner.
    ///
    /// Linux: `iommu_device_claim_dma_owner()`.
    /// - Throws: `noSuchDevice` (ENODEV) if the device has no group; `notPermitted` (EPERM) if
    ///   the group has other users; `busy` (EBUSY) if the group is not on its default domain.
    public func claimDMAOwnership(of id: DeviceID, owner: DMAOwner) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let serial = s.devices[id]?.groupSerial else { throw IOMMUError(.noSuchDevice, device: id) }
            let group = s.groups[serial]!
            if group.ownerCount > 0 {
                guard group.owner == owner else { throw IOMMUError(.notPermitted, device: id) }
            } else {
                try takeOwnership(&s, serial, owner)
            }
            s.groups[serial]!.ownerCount += 1
        }
    }

    /// Drops one device claim; the last one returns the group to its default domain.
    /// Linux: `iommu_device_release_dma_owner()`.
    public func releaseDMAOwnership(of id: DeviceID) {
        state.withLock { s in
            guard let serial = s.devices[id]?.groupSerial else { return }
            let group = s.groups[serial]!
            guard group.owner != nil, group.ownerCount > 0 else {
                warnings.warn(.unbalancedDMAOwnershipRelease(group: group.id))
                return
            }
            if group.ownerCount == 1 {
                releaseOwnership(&s, serial)
            } else {
                s.groups[serial]!.ownerCount -= 1
            }
        }
    }

    /// Linux: `__iommu_take_dma_ownership()`.
    private func takeOwnership(_ s: inout RegistryState, _ serial: UInt64, _ owner: DMAOwner) throws(IOMMUError) {
        let group = s.groups[serial]!
        if let current = group.domain, current !== group.defaultDomain { throw IOMMUError(.busy) }
        if group.blockingDomain == nil {
            guard let first = group.devices.first else { throw IOMMUError(.noSuchDevice) }
            let info = s.devices[first]!.info
            let blocking: IOMMUDomain
            do throws(IOMMUError) {
                blocking = try makeDomain(type: .blocked, driver: group.driver, device: info, &s)
            } catch {
                // Linux: no blocked domain from the driver → an empty paging domain blocks as well.
                blocking = try makeDomain(type: .unmanaged, driver: group.driver, device: info, &s)
            }
            s.groups[serial]!.blockingDomain = blocking
        }
        try setGroupDomain(&s, serial, s.groups[serial]!.blockingDomain!)
        s.groups[serial]!.owner = owner
    }

    /// Linux: `__iommu_release_dma_ownership()`.
    private func releaseOwnership(_ s: inout RegistryState, _ serial: UInt64) {
        let group = s.groups[serial]!
        guard group.owner != nil, group.ownerCount > 0 else {
            warnings.warn(.unbalancedDMAOwnershipRelease(group: group.id))
            return
        }
        s.groups[serial]!.owner = nil
        s.groups[serial]!.ownerCount = 0
        setCoreDomain(&s, serial)
    }

    // MARK: - Reserved regions

    /// The device's reserved regions: the driver's, then the firmware's, unmerged.
    /// Linux: `iommu_get_resv_regions()`.
    public func reservedRegions(of id: DeviceID) -> [ReservedRegion] {
        state.withLock { s in deviceRegions(&s, id) }
    }

    /// The group's reserved regions, sorted and merged as Linux does; `nil` for an unknown group.
    /// Linux: `iommu_get_group_resv_regions()`. `.sysfsText` gives the `reserved_regions` file.
    public func reservedRegions(ofGroup groupID: Int) -> ReservedRegionList? {
        state.withLock { s in
            guard let group = s.groups.values.first(where: { $0.id == groupID }) else { return nil }
            var list = ReservedRegionList()
            for id in group.devices {
                for region in deviceRegions(&s, id) { list.insert(region) }
            }
            return list
        }
    }

    func deviceRegions(_ s: inout RegistryState, _ id: DeviceID) -> [ReservedRegion] {
        // `instance` is set from the moment the driver accepted the device until it is released.
        guard let record = s.devices[id], let instance = record.instance, let driver = s.instances[instance]?.driver
        else { return [] }
        return driver.reservedRegions(for: record.info) + record.info.firmwareReservedRegions
    }

    // MARK: - Faults

    /// Reports a fault a hardware model observed for a device: delivered to the handler of the
    /// domain the device is attached to, and to the trace (`io_page_fault`, with the IOMMU
    /// driver's name, whether or not a handler is installed — also for a device attached to no
    /// domain, e.g. a deferred one).
    ///
    /// Linux: `report_iommu_fault()`. Takes the registry lock briefly, then calls the handler
    /// with no core lock held: call it without holding any lock your `IOMMUDriver` callbacks take
    /// (they run under the registry lock), or the two can deadlock.
    /// - Returns: `nil` if a handler handled it; the handler's errno; `notImplemented` (ENOSYS)
    ///   without a handler or domain; `noSuchDevice` for an unknown device.
    @discardableResult
    public func reportFault(_ fault: IOMMUFault) -> Errno? {
        let target: (domain: IOMMUDomain?, name: String, driverName: String?)? = state.withLock { s in
            guard let record = s.devices[fault.device] else { return nil }
            let driverName =
                record.instance.flatMap { s.instances[$0]?.driver.name }
                ?? record.info.iommu.flatMap { s.instanceByName[$0.iommu] }.flatMap { s.instances[$0]?.driver.name }
            return (record.attached, record.info.name, driverName)
        }
        guard let target else { return .noSuchDevice }
        if let domain = target.domain { return domain.reportFault(fault, deviceName: target.name) }
        if trace.isEnabled {
            trace.record(.ioPageFault(
                driver: target.driverName ?? "", device: target.name, iova: fault.iova.rawValue, flags: fault.flags))
        }
        return .notImplemented
    }
}
