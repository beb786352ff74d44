import IOMMUBase

// MARK: - The group sysfs `type` attribute

extension IOMMUCore {
    /// The group's sysfs `type` file: "blocked", "identity", "unmanaged", "DMA", "DMA-FQ", or
    /// "unknown" (no default domain); `nil` for an unknown group. Linux: `iommu_group_show_type()`
    /// (the file ends in a newline; this string does not).
    public func defaultDomainTypeText(ofGroup groupID: Int) -> String? {
        groupInfo(id: groupID)?.typeText
    }

    /// Writes the group's sysfs `type` file: replaces the group's default domain by one of the
    /// requested type ("identity", "DMA", "DMA-FQ" or "auto"; a trailing newline is accepted).
    ///
    /// Linux: `iommu_group_store_type()`, with the ~6.2 rules the reference describes, in order:
    /// 1. `privileged == false` (no CAP_SYS_ADMIN / CAP_SYS_RAWIO) → EACCES;
    /// 2. no default domain, or an unknown string → EINVAL;
    /// 3. not exactly one device → EINVAL;
    /// 4. a driver is bound → EBUSY, except for DMA → DMA-FQ;
    /// 5. the group is not on its default domain → EBUSY;
    /// 6. a type the device cannot use (its required type differs, e.g. an untrusted device
    ///    asking for identity) → EINVAL; "auto" = the device's required type or the global default;
    /// 7. the same type → success, nothing changes; DMA → DMA-FQ converts the domain in place;
    ///    otherwise a new default domain is allocated, direct-mapped and attached, and the old one
    ///    is freed (on failure the old one stays).
    /// DMA-FQ needs the driver's `deferredFlush` capability, else it means DMA (as at probe).
    ///
    /// Differs from newer Linux (2025): there, apart from DMA → DMA-FQ, any bound driver or DMA
    /// owner gives EPERM, and multi-device groups may change type.
    /// - Throws: `IOMMUError` with code EACCES, EINVAL, EBUSY or the allocation/attach error;
    ///   `noSuchDevice` for an unknown group.
    public func setDefaultDomainType(ofGroup groupID: Int, to text: String, privileged: Bool = true) throws(IOMMUError) {
        guard privileged else { throw IOMMUError(.notPermitted, code: .permissionDenied) }
        try state.withLock { s throws(IOMMUError) in
            guard let serial = s.groups.values.first(where: { $0.id == groupID })?.serial else {
                throw IOMMUError(.noSuchDevice)
            }
            let group = s.groups[serial]!
            guard let oldDomain = group.defaultDomain else { throw IOMMUError(.invalidArgument) }
            var trimmed = Substring(text)
            if trimmed.hasSuffix("\n") { trimmed = trimmed.dropLast() }
            var requested: IOMMUDomainType?
            switch trimmed {
            case "identity": requested = .identity
            case "DMA": requested = .dma
            case "DMA-FQ": requested = .dmaFQ
            case "auto": requested = nil
            default: throw IOMMUError(.invalidArgument)
            }
            guard group.devices.count == 1, let deviceID = group.devices.first else {
                throw IOMMUError(.invalidArgument)  // "Group has more than one device"
            }
            let record = s.devices[deviceID]!
            let toFlushQueue = requested == .dmaFQ && oldDomain.type == .dma
            if record.boundDriver != nil && !toFlushQueue {
                throw IOMMUError(.busy, device: deviceID)  // "Device is still bound to driver"
            }
            guard group.domain === oldDomain else { throw IOMMUError(.busy, device: deviceID) }

            let required: IOMMUDomainType? =
                record.info.isUntrusted ? .dma : group.driver.defaultDomainType(for: record.info)
            var type: IOMMUDomainType
            if let requested {
                if let required, required != requested { throw IOMMUError(.invalidArgument, device: deviceID) }
                type = requested
            } else {
                type = required ?? configuration.defaultDomainType
            }
            if type == .dmaFQ && !group.driver.capable(.deferredFlush, device: record.info) { type = .dma }
            if type == oldDomain.type { return }
            if type == .dmaFQ && oldDomain.type == .dma {
                oldDomain.convertToFlushQueue()
                return
            }

            let newDomain = try makeDomain(type: type, driver: group.driver, device: record.info, &s)
            do throws(IOMMUError) {
                try finaliseIfNeeded(newDomain, for: record.info)
                createDirectMappings(newDomain, for: record.info, driver: group.driver)
                s.groups[serial]!.defaultDomain = newDomain
                try setGroupDomain(&s, serial, newDomain)
            } catch {
                s.groups[serial]!.defaultDomain = oldDomain
                freeDomainObject(newDomain)
                throw error
            }
            freeDomainObject(oldDomain)
        }
    }

    // MARK: - Unregistering an IOMMU

    /// Unregisters an IOMMU instance: every device probed through it is released by the driver and
    /// removed from its group (groups die with their last device), and goes back to *deferred*,
    /// with DMA blocked, until an instance of that name registers again.
    ///
    /// Linux: `iommu_device_unregister()` (which releases the instance's devices). A bound driver
    /// stays bound; its use of the default domain ends with the group.
    /// - Throws: `noSuchDevice` (ENODEV) for an unknown name.
    public func unregisterIOMMU(name: String) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let instanceID = s.instanceByName[name], let instance = s.instances[instanceID] else {
                throw IOMMUError(.noSuchDevice)
            }
            for id in s.deviceOrder {
                guard let record = s.devices[id], record.info.iommu?.iommu == name else { continue }
                if record.probeState == .probed, let serial = record.groupSerial {
                    instance.driver.releaseDevice(record.info)
                    if record.usesDefaultDomain {
                        s.groups[serial]!.ownerCount = max(0, s.groups[serial]!.ownerCount - 1)
                        s.devices[id]!.usesDefaultDomain = false
                    }
                    removeFromGroup(&s, id, serial: serial, emitTrace: true)
                }
                s.devices[id]!.instance = nil
                s.devices[id]!.probeState = .deferred
            }
            s.instances[instanceID] = nil
            s.instanceByName[name] = nil
        }
    }
}
