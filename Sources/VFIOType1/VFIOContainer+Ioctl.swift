import IOMMUBase
import IOMMUCore
import PhysicalMemory

// MARK: - The kernel ABI: ioctl(request, buffer) with linux/vfio.h structs byte for byte

extension VFIOContainer {
    /// An ioctl on the container whose argument is an integer (`VFIO_GET_API_VERSION`,
    /// `VFIO_CHECK_EXTENSION`, `VFIO_SET_IOMMU`). Returns the ioctl's value (≥ 0) or −errno.
    /// Requests that take a pointer are answered as `ioctl(request:buffer:)` with an empty buffer
    /// (EFAULT); unknown requests → ENOTTY once an IOMMU type is set, EINVAL before (Linux's
    /// container.c returns its initial -EINVAL when no backend can take the ioctl).
    public func ioctl(request: UInt32, argument: UInt64) -> Int32 {
        switch request {
        case VFIOUAPI.getAPIVersion: return VFIOUAPI.apiVersion
        case VFIOUAPI.checkExtension: return checkExtension(argument)
        case VFIOUAPI.setIOMMU:
            do throws(IOMMUError) {
                try setIOMMU(argument)
                return 0
            } catch { return -error.code.rawValue }
        default:
            var empty: [UInt8] = []
            return ioctl(request: request, buffer: &empty)
        }
    }

    /// An ioctl on the container whose argument points at a user buffer: `buffer` is that
    /// memory (its `count` is how far the caller's memory reaches; reading or writing past it
    /// is EFAULT). Structs are little-endian `linux/vfio.h` layouts. Returns 0 or −errno; never
    /// traps, whatever the request and bytes.
    public func ioctl(request: UInt32, buffer: inout [UInt8]) -> Int32 {
        switch request {
        case VFIOUAPI.getAPIVersion: return VFIOUAPI.apiVersion
        case VFIOUAPI.checkExtension, VFIOUAPI.setIOMMU:
            // The argument is an integer; a pointer value is no extension or type we know.
            return request == VFIOUAPI.checkExtension ? 0 : -Errno.noSuchDevice.rawValue
        default: break
        }
        guard iommuType != nil else { return -Errno.invalidArgument.rawValue }
        let result: Errno?
        switch request {
        case VFIOUAPI.iommuGetInfo: result = ioctlGetInfo(&buffer)
        case VFIOUAPI.iommuMapDMA: result = ioctlMapDMA(&buffer)
        case VFIOUAPI.iommuUnmapDMA: result = ioctlUnmapDMA(&buffer)
        case VFIOUAPI.iommuDirtyPages: result = ioctlDirtyPages(&buffer)
        default: result = .inappropriateIOCTL
        }
        return result.map { -$0.rawValue } ?? 0
    }

    // MARK: GET_INFO

    /// Linux `VFIO_IOMMU_GET_INFO` at the byte level (§8.3): caps MIGRATION, DMA_AVAIL,
    /// IOVA_RANGE, each padded to 8 bytes, `next` relative to the buffer start.
    func ioctlGetInfo(_ buffer: inout [UInt8]) -> Errno? {
        guard buffer.count >= VFIOUAPI.infoMinimumSize else { return .badAddress }
        let argsz = LE.u32(buffer, 0)
        guard argsz >= UInt32(VFIOUAPI.infoMinimumSize) else { return .invalidArgument }
        let info: VFIOIOMMUInfo
        do throws(IOMMUError) { info = try self.info() } catch { return error.code }
        var out = [UInt8](repeating: 0, count: VFIOUAPI.infoSize)
        var flags = VFIOUAPI.infoPageSizes
        LE.put64(&out, 8, info.pageSizes)
        var caps = Self.buildCapabilityChain(info)
        var outArgsz = argsz
        if !caps.isEmpty {
            flags |= VFIOUAPI.infoCaps
            let needed = UInt64(VFIOUAPI.infoSize) + UInt64(caps.count)
            if UInt64(argsz) < needed {
                outArgsz = UInt32(truncatingIfNeeded: needed)
            } else {
                Self.shiftCapabilities(&caps, by: UInt32(VFIOUAPI.infoSize))
                guard buffer.count >= VFIOUAPI.infoSize + caps.count else { return .badAddress }
                buffer.replaceSubrange(VFIOUAPI.infoSize..<(VFIOUAPI.infoSize + caps.count), with: caps)
                LE.put32(&out, 16, UInt32(VFIOUAPI.infoSize))
            }
        }
        LE.put32(&out, 0, outArgsz)
        LE.put32(&out, 4, flags)
        let copy = min(Int(argsz), VFIOUAPI.infoSize)
        guard buffer.count >= copy else { return .badAddress }
        buffer.replaceSubrange(0..<copy, with: out[0..<copy])
        return nil
    }

    /// The capability chain with `next` offsets relative to the chain start (Linux:
    /// `vfio_info_cap_add`, 8-byte aligned since 2023).
    static func buildCapabilityChain(_ info: VFIOIOMMUInfo) -> [UInt8] {
        var chain: [UInt8] = []
        var lastHeader: Int?
        func add(_ id: UInt16, _ body: [UInt8]) {
            let offset = chain.count
            var cap = [UInt8](repeating: 0, count: (VFIOUAPI.capHeaderSize + body.count + 7) & ~7)
            LE.put16(&cap, 0, id)
            LE.put16(&cap, 2, 1)
            cap.replaceSubrange(8..<(8 + body.count), with: body)
            chain += cap
            if let lastHeader { LE.put32(&chain, lastHeader + 4, UInt32(offset)) }
            lastHeader = offset
        }
        var migration = [UInt8](repeating: 0, count: 24)
        LE.put64(&migration, 8, info.migrationPageSizes)
        LE.put64(&migration, 16, info.maxDirtyBitmapSize)
        add(VFIOUAPI.capMigration, migration)
        var avail = [UInt8](repeating: 0, count: 4)
        LE.put32(&avail, 0, info.dmaAvailable)
        add(VFIOUAPI.capDMAAvail, avail)
        if !info.iovaRanges.isEmpty {
            var ranges = [UInt8](repeating: 0, count: 8 + 16 * info.iovaRanges.count)
            LE.put32(&ranges, 0, UInt32(info.iovaRanges.count))
            for (i, range) in info.iovaRanges.enumerated() {
                LE.put64(&ranges, 8 + 16 * i, range.first.rawValue)
                LE.put64(&ranges, 16 + 16 * i, range.last.rawValue)
            }
            add(VFIOUAPI.capIOVARange, ranges)
        }
        return chain
    }

    /// Makes every `next` relative to the info buffer (Linux: `vfio_info_cap_shift`).
    static func shiftCapabilities(_ chain: inout [UInt8], by offset: UInt32) {
        var at = 0
        while true {
            let next = LE.u32(chain, at + 4)
            if next == 0 { break }
            LE.put32(&chain, at + 4, next + offset)
            at = Int(next)
        }
    }

    // MARK: MAP_DMA / UNMAP_DMA

    func ioctlMapDMA(_ buffer: inout [UInt8]) -> Errno? {
        guard buffer.count >= VFIOUAPI.dmaMapSize else { return .badAddress }
        let argsz = LE.u32(buffer, 0)
        let flags = LE.u32(buffer, 4)
        let known = VFIOUAPI.dmaMapFlagRead | VFIOUAPI.dmaMapFlagWrite | VFIOUAPI.dmaMapFlagVaddr
        guard argsz >= UInt32(VFIOUAPI.dmaMapSize), flags & ~known == 0 else { return .invalidArgument }
        do throws(IOMMUError) {
            try mapDMA(
                iova: IOVA(LE.u64(buffer, 16)), vaddr: VirtAddr(LE.u64(buffer, 8)), length: LE.u64(buffer, 24),
                read: flags & VFIOUAPI.dmaMapFlagRead != 0, write: flags & VFIOUAPI.dmaMapFlagWrite != 0,
                updateVaddr: flags & VFIOUAPI.dmaMapFlagVaddr != 0)
        } catch { return error.code }
        return nil
    }

    func ioctlUnmapDMA(_ buffer: inout [UInt8]) -> Errno? {
        guard buffer.count >= VFIOUAPI.dmaUnmapSize else { return .badAddress }
        let argsz = LE.u32(buffer, 0)
        let flags = LE.u32(buffer, 4)
        let dirty = VFIOUAPI.dmaUnmapFlagGetDirtyBitmap
        let known = dirty | VFIOUAPI.dmaUnmapFlagAll | VFIOUAPI.dmaUnmapFlagVaddr
        guard argsz >= UInt32(VFIOUAPI.dmaUnmapSize), flags & ~known == 0 else { return .invalidArgument }
        if flags & dirty != 0, flags & (VFIOUAPI.dmaUnmapFlagAll | VFIOUAPI.dmaUnmapFlagVaddr) != 0 {
            return .invalidArgument
        }
        let iova = LE.u64(buffer, 8)
        let size = LE.u64(buffer, 16)
        var bitmap: VFIODirtyBitmap?
        if flags & dirty != 0 {
            guard argsz >= UInt32(VFIOUAPI.dmaUnmapSize + VFIOUAPI.bitmapSize) else { return .invalidArgument }
            guard buffer.count >= VFIOUAPI.dmaUnmapSize + VFIOUAPI.bitmapSize else { return .badAddress }
            let b = VFIODirtyBitmap(pageSize: LE.u64(buffer, 24), size: LE.u64(buffer, 32), data: VirtAddr(LE.u64(buffer, 40)))
            guard Self.userRangeAccessible(b.data.rawValue, b.size) else { return .invalidArgument }
            do throws(IOMMUError) { try Self.verifyBitmapSize(length: size, bitmap: b) } catch { return error.code }
            bitmap = b
        }
        let unmapped: UInt64
        do throws(IOMMUError) {
            unmapped = try unmapDMA(
                iova: IOVA(iova), length: size, all: flags & VFIOUAPI.dmaUnmapFlagAll != 0,
                updateVaddr: flags & VFIOUAPI.dmaUnmapFlagVaddr != 0, dirtyBitmap: bitmap)
        } catch { return error.code }
        LE.put64(&buffer, 16, unmapped)
        return nil
    }

    /// Linux `access_ok`: the range does not wrap and stays below `TASK_SIZE`.
    static func userRangeAccessible(_ address: UInt64, _ length: UInt64) -> Bool {
        let (end, overflow) = address.addingReportingOverflow(length)
        return !overflow && end <= VFIOUAPI.userAddressLimit
    }

    // MARK: DIRTY_PAGES

    func ioctlDirtyPages(_ buffer: inout [UInt8]) -> Errno? {
        guard iommuType == .type1v2 else { return .permissionDenied }
        guard buffer.count >= VFIOUAPI.dirtyBitmapSize else { return .badAddress }
        let argsz = LE.u32(buffer, 0)
        let flags = LE.u32(buffer, 4)
        let mask = VFIOUAPI.dirtyPagesFlagStart | VFIOUAPI.dirtyPagesFlagStop | VFIOUAPI.dirtyPagesFlagGetBitmap
        guard argsz >= UInt32(VFIOUAPI.dirtyBitmapSize), flags & ~mask == 0, flags.nonzeroBitCount == 1 else {
            return .invalidArgument
        }
        do throws(IOMMUError) {
            switch flags {
            case VFIOUAPI.dirtyPagesFlagStart: try startDirtyTracking()
            case VFIOUAPI.dirtyPagesFlagStop: try stopDirtyTracking()
            default:
                guard argsz >= UInt32(VFIOUAPI.dirtyBitmapSize + VFIOUAPI.dirtyBitmapGetSize) else { return .invalidArgument }
                guard buffer.count >= VFIOUAPI.dirtyBitmapSize + VFIOUAPI.dirtyBitmapGetSize else { return .badAddress }
                let iova = LE.u64(buffer, 8)
                let size = LE.u64(buffer, 16)
                let b = VFIODirtyBitmap(pageSize: LE.u64(buffer, 24), size: LE.u64(buffer, 32), data: VirtAddr(LE.u64(buffer, 40)))
                guard !iova.addingReportingOverflow(size).overflow else { return .invalidArgument }
                guard Self.userRangeAccessible(b.data.rawValue, b.size) else { return .invalidArgument }
                try dirtyBitmap(iova: IOVA(iova), length: size, bitmap: b)
            }
        } catch { return error.code }
        return nil
    }
}

extension VFIOGroup {
    /// An ioctl on the group file. `VFIO_GROUP_GET_STATUS` takes a `vfio_group_status` buffer;
    /// `VFIO_GROUP_SET_CONTAINER` a buffer holding the container's fd (`int32`);
    /// `VFIO_GROUP_UNSET_CONTAINER` none. Returns 0 or −errno (unknown request: ENOTTY;
    /// `VFIO_GROUP_GET_DEVICE_FD` is not modelled: ENOTTY).
    public func ioctl(request: UInt32, buffer: inout [UInt8]) -> Int32 {
        switch request {
        case VFIOUAPI.groupGetStatus:
            guard buffer.count >= VFIOUAPI.groupStatusSize else { return -Errno.badAddress.rawValue }
            guard LE.u32(buffer, 0) >= UInt32(VFIOUAPI.groupStatusSize) else { return -Errno.invalidArgument.rawValue }
            let status = self.status
            var flags: UInt32 = 0
            if status.viable { flags |= VFIOUAPI.groupFlagsViable }
            if status.containerSet { flags |= VFIOUAPI.groupFlagsContainerSet }
            LE.put32(&buffer, 4, flags)
            return 0
        case VFIOUAPI.groupSetContainer:
            guard buffer.count >= 4 else { return -Errno.badAddress.rawValue }
            let fd = Int32(bitPattern: LE.u32(buffer, 0))
            guard let container = vfio.container(fd: fd) else { return -Errno.badFileDescriptor.rawValue }
            do throws(IOMMUError) { try setContainer(container) } catch { return -error.code.rawValue }
            return 0
        case VFIOUAPI.groupUnsetContainer:
            do throws(IOMMUError) { try unsetContainer() } catch { return -error.code.rawValue }
            return 0
        default:
            return -Errno.inappropriateIOCTL.rawValue
        }
    }
}
