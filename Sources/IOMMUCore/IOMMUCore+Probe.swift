import IOMMUBase

// MARK: - Probe (registry lock held throughout)

extension IOMMUCore {
    /// Probes `ids` in order, then sets up default domains for the groups that got their first
    /// devices. Linux 6.12: `bus_iommu_probe()` / `__iommu_probe_device()` with a group list.
    func probeBatch(_ s: inout RegistryState, _ ids: [DeviceID]) {
        var groupsNeedingDomain: [UInt64] = []
        var waitingForDomain: [DeviceID] = []
        for id in ids {
            switch probeOne(&s, id) {
            case .done: break
            case let .needsDefaultDomain(serial):
                if !groupsNeedingDomain.contains(serial) { groupsNeedingDomain.append(serial) }
                waitingForDomain.append(id)
            }
        }
        for serial in groupsNeedingDomain {
            guard s.groups[serial] != nil else { continue }
            do throws(IOMMUError) {
                try setUpDefaultDomain(&s, serial)
                for id in waitingForDomain where s.devices[id]?.groupSerial == serial {
                    let record = s.devices[id]!
                    s.instances[record.instance!]!.driver.probeFinalize(record.info)
                }
            } catch {
                // Unwind every device of the group that has no domain (all of them: the group had
                // none), so no group, ID or reference outlives the failed probe.
                let members = s.groups[serial]!.devices
                for id in members {
                    let record = s.devices[id]!
                    s.instances[record.instance!]!.driver.releaseDevice(record.info)
                    removeFromGroup(&s, id, serial: serial, emitTrace: true)
                    s.devices[id]!.probeState = .probeFailed(error.code)
                    s.devices[id]!.instance = nil
                }
            }
        }
    }

    enum ProbeOutcome {
        case done
        case needsDefaultDomain(UInt64)
    }

    /// Linux: `__iommu_probe_device()`.
    private func probeOne(_ s: inout RegistryState, _ id: DeviceID) -> ProbeOutcome {
        guard let record = s.devices[id], record.probeState == .deferred else { return .done }
        let info = record.info
        guard let spec = info.iommu else {
            s.devices[id]!.probeState = .noIOMMU
            return .done
        }
        guard let instanceID = s.instanceByName[spec.iommu], let instance = s.instances[instanceID] else {
            // EPROBE_DEFER: the instance has not registered; DMA stays blocked.
            return .done
        }
        let driver = instance.driver
        do throws(IOMMUError) {
            try driver.probeDevice(info)
        } catch {
            if error.reason != .probeDeferred { s.devices[id]!.probeState = .probeFailed(error.code) }
            return .done
        }

        // Group: the core turns the driver's choice into a referenced group…
        let serial: UInt64
        do throws(IOMMUError) {
            let choice = try driver.deviceGroup(info)
            guard let chosen = resolveGroup(&s, choice, info, driver: driver) else {
                throw IOMMUError(.invalidArgument, device: id)
            }
            serial = chosen
        } catch {
            driver.releaseDevice(info)
            s.devices[id]!.probeState = .probeFailed(error.code)
            return .done
        }
        // …the device takes its own reference, and the choice's reference is dropped, so the
        // group lives exactly as long as its devices (and other holders).
        s.groups[serial]!.devices.append(id)
        s.groups[serial]!.referenceCount += 1
        s.devices[id]!.groupSerial = serial
        s.devices[id]!.instance = instanceID
        putGroup(&s, serial)

        let group = s.groups[serial]!
        if let defaultDomain = group.defaultDomain {
            createDirectMappings(defaultDomain, for: info, driver: driver)
        }
        if let current = group.domain {
            do throws(IOMMUError) {
                try attachDeviceLocked(&s, id, to: current, checkPageSize: current !== group.blockingDomain)
            } catch {
                warnings.warn(.failedToAddToGroup(device: id, group: group.id, errno: error.code.rawValue))
                driver.releaseDevice(info)
                removeFromGroup(&s, id, serial: serial, emitTrace: false)
                s.devices[id]!.probeState = .probeFailed(error.code)
                s.devices[id]!.instance = nil
                return .done
            }
            s.devices[id]!.probeState = .probed
            if trace.isEnabled { trace.record(.addDeviceToGroup(groupID: group.id, device: info.name)) }
            driver.probeFinalize(info)
            return .done
        }
        s.devices[id]!.probeState = .probed
        if trace.isEnabled { trace.record(.addDeviceToGroup(groupID: group.id, device: info.name)) }
        if group.defaultDomain == nil { return .needsDefaultDomain(serial) }
        return .done
    }

    /// Turns a driver's group choice into a group with one reference for the caller.
    /// Returns `nil` for a choice naming no live group (Linux: WARN, -EINVAL).
    private func resolveGroup(
        _ s: inout RegistryState, _ choice: IOMMUGroupChoice, _ info: IOMMUDeviceInfo, driver: any IOMMUDriver
    ) -> UInt64? {
        switch choice {
        case .newGroup:
            return allocateGroup(&s, driver: driver)
        case .pciDefault:
            guard let pci = info.pci else { return allocateGroup(&s, driver: driver) }
            return pciDeviceGroup(&s, info, pci, driver: driver)
        case let .sameGroupAs(other):
            guard let serial = s.devices[other]?.groupSerial else { return nil }
            s.groups[serial]!.referenceCount += 1
            return serial
        case let .existingGroup(id):
            guard let serial = s.groups.values.first(where: { $0.id == id })?.serial else { return nil }
            s.groups[serial]!.referenceCount += 1
            return serial
        }
    }

    /// The PCI grouping rules, on the topology firmware describes.
    ///
    /// 1. A DMA alias (either way) shared with an already-grouped function → that group.
    /// 2. Without full ACS isolation, the function shares a group with every other non-isolated,
    ///    already-grouped function on the same bus (covering non-ACS bridges and multi-function
    ///    slots).
    /// 3. Otherwise a new group.
    ///
    /// Linux: `pci_device_group()`. Differs: the bridge walk is summarised by the firmware's
    /// `acsIsolated` flag and the bus number instead of a modelled bridge hierarchy.
    private func pciDeviceGroup(
        _ s: inout RegistryState, _ info: IOMMUDeviceInfo, _ pci: PCIDeviceFirmware, driver: any IOMMUDriver
    ) -> UInt64 {
        let requesters = Set([pci.address] + pci.dmaAliases)
        var candidate: UInt64?
        for otherID in s.deviceOrder where otherID != info.id {
            guard let other = s.devices[otherID], let serial = other.groupSerial, let otherPCI = other.info.pci,
                other.info.iommu?.iommu == info.iommu?.iommu
            else { continue }
            let otherRequesters = Set([otherPCI.address] + otherPCI.dmaAliases)
            if !requesters.isDisjoint(with: otherRequesters) {
                candidate = serial
                break
            }
            if candidate == nil && !pci.acsIsolated && !otherPCI.acsIsolated
                && otherPCI.address.segment == pci.address.segment && otherPCI.address.bus == pci.address.bus
            {
                candidate = serial
            }
        }
        if let candidate {
            s.groups[candidate]!.referenceCount += 1
            return candidate
        }
        return allocateGroup(&s, driver: driver)
    }

    // MARK: - Default domains

    /// The default domain type for a group: polls every member's requirement (untrusted → DMA,
    /// else the driver's `defaultDomainType`); conflicting requirements → warning and the global
    /// default. Untrusted members always get a strict DMA domain; DMA-FQ needs the driver's
    /// `deferredFlush` capability.
    ///
    /// Linux: `iommu_get_default_domain_type()` (6.2 conflict rule).
    func defaultDomainType(_ s: inout RegistryState, _ serial: UInt64) -> IOMMUDomainType {
        let group = s.groups[serial]!
        var required: (type: IOMMUDomainType, device: DeviceID)?
        var conflict = false
        var untrusted = false
        for id in group.devices {
            let info = s.devices[id]!.info
            var type = group.driver.defaultDomainType(for: info)
            if info.isUntrusted {
                untrusted = true
                if let requested = type, requested != .dma {
                    warnings.warn(.untrustedDeviceForcedToDMA(device: id, group: group.id, requestedType: requested.rawValue))
                }
                type = .dma
            }
            guard let type else { continue }
            if let current = required {
                if current.type != type {
                    warnings.warn(.defaultDomainTypeConflict(
                        device: id, type: type.rawValue, otherDevice: current.device, otherType: current.type.rawValue))
                    conflict = true
                }
            } else {
                required = (type, id)
            }
        }
        var type = conflict ? configuration.defaultDomainType : (required?.type ?? configuration.defaultDomainType)
        if untrusted && type != .dma { type = .dma }
        if type == .dmaFQ, let first = group.devices.first,
            !group.driver.capable(.deferredFlush, device: s.devices[first]!.info)
        {
            type = .dma
        }
        return type
    }

    /// Allocates the group's default domain, identity-maps its members' DIRECT regions and
    /// attaches every member. Linux: `iommu_setup_default_domain()`.
    func setUpDefaultDomain(_ s: inout RegistryState, _ serial: UInt64) throws(IOMMUError) {
        let group = s.groups[serial]!
        guard let firstID = group.devices.first else { return }
        let firstInfo = s.devices[firstID]!.info
        let type = defaultDomainType(&s, serial)
        let domain: IOMMUDomain
        do throws(IOMMUError) {
            domain = try makeDomain(type: type, driver: group.driver, device: firstInfo, &s)
        } catch {
            guard type != .dma else { throw error }
            warnings.warn(.defaultDomainFallbackToDMA(group: group.id, requestedType: type.rawValue))
            domain = try makeDomain(type: .dma, driver: group.driver, device: firstInfo, &s)
        }
        // Finalise before the direct mappings so they use the final page sizes.
        do throws(IOMMUError) {
            try finaliseIfNeeded(domain, for: firstInfo)
        } catch {
            freeDomainObject(domain)
            throw error
        }
        s.groups[serial]!.defaultDomain = domain
        for id in group.devices {
            createDirectMappings(domain, for: s.devices[id]!.info, driver: group.driver)
        }
        if group.domain == nil {
            do throws(IOMMUError) {
                try setGroupDomain(&s, serial, domain)
            } catch {
                s.groups[serial]!.defaultDomain = nil
                freeDomainObject(domain)
                throw error
            }
        }
    }

    /// Identity-maps the device's DIRECT and DIRECT_RELAXABLE regions into a DMA-API domain,
    /// skipping pages already mapped (so overlapping regions of group peers are fine), then
    /// flushes the IOTLB. Linux: `iommu_create_device_direct_mappings()`.
    func createDirectMappings(_ domain: IOMMUDomain, for info: IOMMUDeviceInfo, driver: any IOMMUDriver) {
        guard domain.type.isDMAAPI, let page = domain.pageSizes.smallest else { return }
        let regions = driver.reservedRegions(for: info) + info.firmwareReservedRegions
        regions: for region in regions where region.type == .direct || region.type == .directRelaxable {
            guard let start = alignUp(region.start, to: page),
                let regionEnd = region.start.addingReportingOverflow(region.length).overflow
                    ? nil : region.start &+ region.length,
                let end = alignUp(regionEnd, to: page)
            else { continue }
            var pending: UInt64 = 0
            var address = start
            while address <= end {
                if address != end && domain.iovaToPhys(IOVA(address)) == nil {
                    pending &+= page.bytes
                } else if pending != 0 {
                    let first = address &- pending
                    do throws(IOMMUError) {
                        try domain.map(iova: IOVA(first), paddr: PhysAddr(first), length: pending, prot: region.prot)
                    } catch {
                        warnings.warn(.directMappingFailed(device: info.id, iova: IOVA(first), errno: error.code.rawValue))
                        continue regions
                    }
                    pending = 0
                }
                if address == end { break }
                address &+= page.bytes  // < end, so no wrap
            }
        }
        if !regions.isEmpty { domain.flushIOTLBAll() }
    }
}
