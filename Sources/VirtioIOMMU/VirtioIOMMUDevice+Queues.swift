import IOMMUBase

/// One descriptor of a virtqueue chain: driver-written bytes (device-readable) or a
/// device-writable buffer (its length is `bytes.count`; the device fills it).
public struct VirtqueueDescriptor: Hashable, Sendable {
    public var bytes: [UInt8]
    public var isDeviceWritable: Bool

    public init(bytes: [UInt8], isDeviceWritable: Bool) {
        self.bytes = bytes
        self.isDeviceWritable = isDeviceWritable
    }

    /// A device-readable descriptor.
    public static func readable(_ bytes: [UInt8]) -> VirtqueueDescriptor { VirtqueueDescriptor(bytes: bytes, isDeviceWritable: false) }
    /// A device-writable descriptor of `length` zero bytes.
    public static func writable(_ length: Int) -> VirtqueueDescriptor {
        VirtqueueDescriptor(bytes: [UInt8](repeating: 0, count: length), isDeviceWritable: true)
    }
}

/// A descriptor chain as the driver queues it: readable descriptors, then writable ones, split
/// however the driver likes (the device MUST NOT depend on the split).
public struct VirtioDescriptorChain: Hashable, Sendable {
    public var descriptors: [VirtqueueDescriptor]

    public init(_ descriptors: [VirtqueueDescriptor]) { self.descriptors = descriptors }

    /// The bytes of the writable descriptors, concatenated.
    public var writtenBytes: [UInt8] { descriptors.filter(\.isDeviceWritable).flatMap(\.bytes) }
}

/// A request the device completed: the chain (writable descriptors filled) and the used length.
public struct VirtioCompletedRequest: Hashable, Sendable {
    public var id: UInt64
    public var chain: VirtioDescriptorChain
    public var usedLength: UInt32
}

extension VirtioIOMMUDevice {
    // MARK: - Descriptor chains

    /// Processes a request given as a descriptor chain, gathering the readable descriptors and
    /// scattering the written bytes over the writable ones.
    ///
    /// A readable descriptor after a writable one breaks the driver's MUST; the chain is
    /// returned unwritten (used length 0).
    public func handleRequest(chain: inout VirtioDescriptorChain) -> UInt32 {
        var sawWritable = false
        var readable: [UInt8] = []
        var writableLength = 0
        for descriptor in chain.descriptors {
            if descriptor.isDeviceWritable {
                sawWritable = true
                writableLength += descriptor.bytes.count
            } else {
                guard !sawWritable else { return 0 }
                readable += descriptor.bytes
            }
        }
        let (written, used) = handleRequest(readable: readable, writableLength: writableLength)
        var offset = 0
        for index in chain.descriptors.indices where chain.descriptors[index].isDeviceWritable {
            let count = chain.descriptors[index].bytes.count
            let end = min(offset + count, Int(used))
            if end > offset {
                chain.descriptors[index].bytes.replaceSubrange(0..<(end - offset), with: written[offset..<end])
            }
            offset += count
        }
        return used
    }

    // MARK: - requestq

    /// The driver makes a chain available on requestq (virtqueue 0). Returns its ID.
    @discardableResult
    public func submitRequest(_ chain: VirtioDescriptorChain) -> UInt64 {
        state.withLock { s in
            let id = s.nextBufferID
            s.nextBufferID &+= 1
            s.pendingRequests.append((id, chain))
            return id
        }
    }

    /// The driver kicks requestq: the device processes every available request in ring order.
    public func processRequestQueue() -> [VirtioCompletedRequest] {
        var completed: [VirtioCompletedRequest] = []
        while let next = state.withLock({ s -> (id: UInt64, chain: VirtioDescriptorChain)? in
            s.pendingRequests.isEmpty ? nil : s.pendingRequests.removeFirst()
        }) {
            var chain = next.chain
            let used = handleRequest(chain: &chain)
            completed.append(VirtioCompletedRequest(id: next.id, chain: chain, usedLength: used))
        }
        return completed
    }

    // MARK: - eventq

    /// The driver makes a device-writable buffer of `length` bytes available on eventq
    /// (virtqueue 1). Returns its ID.
    @discardableResult
    public func postEventBuffer(length: Int = VirtioIOMMUWire.faultRecordLength) -> UInt64 {
        state.withLock { s in
            let id = s.nextBufferID
            s.nextBufferID &+= 1
            s.eventBuffers.append(VirtioEventBuffer(id: id, length: length))
            return id
        }
    }

    /// Event buffers the device has used (filled fault records, or returned unused), oldest first.
    public func takeUsedEventBuffers() -> [VirtioUsedBuffer] {
        state.withLock { s in
            defer { s.usedEvents.removeAll() }
            return s.usedEvents
        }
    }

    /// Event buffers still available to the device.
    public var availableEventBufferCount: Int { state.withLock { $0.eventBuffers.count } }

    /// Encodes a fault record (24 bytes, little-endian, reserved fields zero).
    public static func encodeFault(_ fault: VirtioFaultEvent) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: VirtioIOMMUWire.faultRecordLength)
        bytes.withUnsafeMutableBytes { b in
            b[0] = fault.reason
            storeLE32(b, 4, fault.flags)
            storeLE32(b, 8, fault.endpoint)
            storeLE64(b, 16, fault.address)
        }
        return bytes
    }

    /// Puts a fault record in the next event buffer, or drops it (no buffer: wait or drop — we
    /// drop and count, never blocking translation; a buffer < 24 bytes: the record is not split,
    /// the buffer is returned with used length 0).
    func deliverFault(_ s: inout VirtioDeviceState, _ fault: VirtioFaultEvent) {
        guard !s.eventBuffers.isEmpty else {
            s.stats.eventsDropped &+= 1
            warnings.warn(.virtioEventDropped(endpoint: fault.endpoint, bufferLength: -1))
            return
        }
        let buffer = s.eventBuffers.removeFirst()
        guard buffer.length >= VirtioIOMMUWire.faultRecordLength else {
            s.stats.eventsDropped &+= 1
            warnings.warn(.virtioEventDropped(endpoint: fault.endpoint, bufferLength: buffer.length))
            s.usedEvents.append(VirtioUsedBuffer(id: buffer.id, bytes: [UInt8](repeating: 0, count: buffer.length), usedLength: 0))
            return
        }
        var bytes = Self.encodeFault(fault)
        bytes += [UInt8](repeating: 0, count: buffer.length - bytes.count)
        s.usedEvents.append(VirtioUsedBuffer(id: buffer.id, bytes: bytes, usedLength: UInt32(VirtioIOMMUWire.faultRecordLength)))
        s.stats.eventsDelivered &+= 1
    }
}
