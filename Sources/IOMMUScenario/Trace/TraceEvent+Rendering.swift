import IOMMUBase

// Rendering back to the kernel's text. Not a hot path: used by tests (round trips) and by
// reports that quote an event.

extension TraceEvent {
    /// The whole line as the kernel prints it:
    /// `"%16s-%-7d [%03d] FLAGS %5lu.%06lu: NAME: BODY"`.
    public var renderedLine: String {
        var line = TraceText.padLeft(task, to: 16) + "-" + TraceText.padRight(String(pid), to: 7) + " "
        line += "[" + TraceText.padLeft(String(cpu), to: 3, with: "0") + "] "
        line += flags.description + " "
        let digits = String(timestamp.fraction)
        line += TraceText.padLeft(String(timestamp.seconds), to: 5) + "."
            + String(repeating: "0", count: max(0, Int(timestamp.fractionDigits) - digits.count)) + digits
        line += ": " + body.name + ": " + body.renderedBody
        return line
    }
}

extension TraceEventBody {
    /// The text after `NAME: `, exactly as the kernel's `print fmt` produces it (the `iommu`
    /// events through `IOMMUTraceEvent.text`).
    public var renderedBody: String {
        switch self {
        case .addDeviceToGroup, .removeDeviceFromGroup, .attachDeviceToDomain, .detachDeviceFromDomain, .map, .unmap,
             .ioPageFault:
            // One renderer for the `iommu` events: the core's, which also emits them.
            return iommuEvent!.text
        case .dmaMapPage(let event):
            return "\(event.device) dir=\(event.direction) dma_addr=" + String(event.dmaAddress.rawValue, radix: 16)
                + " size=\(event.length) phys_addr=" + String(event.physAddress.rawValue, radix: 16)
                + " attrs=\(event.attrs)"
        case .dmaUnmapPage(let event):
            return "\(event.device) dir=\(event.direction) dma_addr=" + String(event.dmaAddress.rawValue, radix: 16)
                + " size=\(event.length) attrs=\(event.attrs)"
        case .dmaMapSG(let event):
            return "\(event.device) dir=\(event.direction) nents=\(event.printedEntryCount)/\(event.entryCount)"
                + " ents=\(event.printedSegmentCount)/\(event.segmentCount)"
                + (event.truncated ? " [TRUNCATED]" : "")
                + " dma_addrs=" + TraceText.array(event.dmaAddresses)
                + " sizes=" + TraceText.array(event.segmentLengths)
                + " phys_addrs=" + TraceText.array(event.physAddresses)
                + " attrs=\(event.attrs)"
        case .dmaUnmapSG(let event):
            return "\(event.device) dir=\(event.direction) phys_addrs=" + TraceText.array(event.physAddresses)
                + " attrs=\(event.attrs)"
        case .dmaAlloc(let event):
            return "\(event.device) dir=\(event.direction) dma_addr=" + String(event.dmaAddress.rawValue, radix: 16)
                + " size=\(event.length) virt_addr=\(event.virtAddress) flags=\(event.gfpFlags) attrs=\(event.attrs)"
        case .dmaFree(let event):
            return "\(event.device) dir=\(event.direction) dma_addr=" + String(event.dmaAddress.rawValue, radix: 16)
                + " size=\(event.length) virt_addr=\(event.virtAddress) attrs=\(event.attrs)"
        case .tracingMarkWrite(let text):
            return text
        case .other(_, let body):
            return body
        }
    }
}

/// Small formatting helpers shared by rendering and reports.
enum TraceText {
    /// `__print_array` of u64 or u32 elements: `{0x1,0x2}`.
    static func array(_ values: [UInt64]) -> String {
        var text = "{"
        for (index, value) in values.enumerated() {
            if index > 0 { text += "," }
            text += "0x" + String(value, radix: 16)
        }
        return text + "}"
    }

    static func padLeft(_ text: String, to width: Int, with pad: Character = " ") -> String {
        let count = text.count
        return count >= width ? text : String(repeating: pad, count: width - count) + text
    }

    static func padRight(_ text: String, to width: Int) -> String {
        let count = text.count
        return count >= width ? text : text + String(repeating: " ", count: width - count)
    }

    /// `0x…` lower-case hex.
    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}
