import IOMMUBase
import Testing

@Suite struct ErrnoTests {
    @Test func valuesAreLinuxs() {
        #expect(Errno.invalidArgument.rawValue == 22)
        #expect(Errno.exists.rawValue == 17)
        #expect(Errno.outOfRange.rawValue == 34)
        #expect(Errno.noMemory.rawValue == 12)
        #expect(Errno.badAddress.rawValue == 14)
        #expect(Errno.busy.rawValue == 16)
        #expect(Errno.probeDefer.rawValue == 517)
        #expect(Errno.overflow.rawValue == 75)
    }

    @Test func namesParseBack() {
        #expect(Errno.invalidArgument.name == "EINVAL")
        #expect(Errno(name: "EEXIST") == .exists)
        #expect(Errno(name: "EPROBE_DEFER") == .probeDefer)
        #expect(Errno(name: "EWHAT") == nil)
        #expect(Errno(rawValue: 999).name == "E?999")
    }
}

@Suite struct IOMMUErrorTests {
    @Test func everyReasonHasItsLinuxErrno() {
        #expect(IOMMUError(.unaligned).code == .invalidArgument)
        #expect(IOMMUError(.lengthOverflow).code == .overflow)
        #expect(IOMMUError(.addressOutOfRange).code == .outOfRange)
        #expect(IOMMUError(.alreadyMapped).code == .exists)
        #expect(IOMMUError(.outOfMemory).code == .noMemory)
        #expect(IOMMUError(.probeDeferred).code == .probeDefer)
        #expect(IOMMUError(.badAddress).code == .badAddress)
        for reason in IOMMUError.Reason.allCases {
            #expect(IOMMUError(reason).code.name.hasPrefix("E"))
        }
    }

    @Test func codeCanBeOverriddenPerCallSite() {
        #expect(IOMMUError(.notMapped, code: .invalidArgument).code == .invalidArgument)
    }

    @Test func messageNamesAddressSizeAndDevice() {
        let error = IOMMUError(.alreadyMapped, address: 0x4000_0000, length: 0x1000, device: DeviceID(3))
        #expect(error.description == "alreadyMapped (EEXIST) at 0x40000000 size 0x1000 for device#3")
        #expect(IOMMUError(.noSuchDevice).description == "noSuchDevice (ENODEV)")
    }

    @Test func errorIsTrivialSoThrowingNeverAllocates() {
        #expect(_isPOD(IOMMUError.self))
        #expect(_isPOD(IOMMUWarning.self))
    }
}

@Suite struct WarningSinkTests {
    @Test func recordingSinkKeepsOrderAndCounts() {
        let sink = RecordingWarningSink(capacity: 2)
        sink.warn(.iovaDoubleFree(pfn: PFN(1), pages: 1, cpu: 0))
        sink.warn(.splitBlockOnUnmap(iova: IOVA(0x20_0000), blockShift: 21))
        sink.warn(.unmapOfUnmappedIOVA(iova: IOVA(0x1000), pageSize: 0x1000))
        #expect(sink.totalCount == 3)
        #expect(sink.warnings == [
            .splitBlockOnUnmap(iova: IOVA(0x20_0000), blockShift: 21),
            .unmapOfUnmappedIOVA(iova: IOVA(0x1000), pageSize: 0x1000),
        ])
        #expect(sink.drain().count == 2)
        #expect(sink.warnings.isEmpty)
    }

    @Test func warningTextNamesTheFacts() {
        let text = IOMMUWarning.iovaFreeWrongSize(pfn: PFN(0xFFFFC), pages: 2, allocatedPages: 4, cpu: 1).description
        #expect(text.contains("pfn 0xffffc") && text.contains("size 2") && text.contains("allocated with 4") && text.contains("cpu 1"))
        #expect(IOMMUWarning.splitBlockOnUnmap(iova: IOVA(0x4000_0000), blockShift: 30).description.contains("1G block"))
    }
}

@Suite struct FailNthTests {
    @Test func failsExactlyTheNthCallOnce() {
        let injector = FailNth()
        #expect(!injector.shouldFail())
        injector.failOn(3)
        #expect(!injector.shouldFail())
        #expect(!injector.shouldFail())
        #expect(injector.shouldFail())
        #expect(!injector.shouldFail())
        #expect(injector.callCount == 5)
        #expect(injector.failureCount == 1)
    }

    @Test func hotPathVariantCountsOnlyWhileArmed() {
        let injector = FailNth()
        #expect(!injector.shouldFailWhenArmed())
        #expect(injector.callCount == 0, "disarmed: not counted")
        injector.failOn(2)
        #expect(!injector.shouldFailWhenArmed())
        #expect(injector.shouldFailWhenArmed())
        #expect(!injector.shouldFailWhenArmed())
        #expect(injector.callCount == 2)
        #expect(injector.failureCount == 1)
    }
}

@Suite struct SplitMix64Tests {
    @Test func knownSequenceForSeedZero() {
        // First outputs of SplitMix64 seeded with 0 (the published reference values).
        var rng = SplitMix64(seed: 0)
        #expect(rng.next() == 0xE220_A839_7B1D_CDAF)
        #expect(rng.next() == 0x6E78_9E6A_A1B9_65F4)
        #expect(rng.next() == 0x06C4_5D18_8009_454F)
    }
}
