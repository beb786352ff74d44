/// Scenarios built into the tool (`iommu demo`, the benchmarks' platform).
public enum BuiltInScenarios {
    /// `examples/server.yaml`, verbatim (a test keeps the two identical).
    public static let server: String = #"""
scenario: server
description: |
  A two-socket server: three Arm SMMUs (smmu2 probes late), 32 PCI functions and two
  platform devices. Lazy (flush-queue) DMA domains by default; untrusted external
  ports are forced to strict. Used by `iommu demo` and as the benchmarks' platform.
platform:
  cpu-page-size: 4K
  default-domain: lazy
  ram: 2G
  iommus:
    - {name: smmu0, kind: smmu, smrs: 128, context-banks: 64, tlb-entries: 256}
    - {name: smmu1, kind: smmu, smrs: 128, context-banks: 64, tlb-entries: 256}
    - {name: smmu2, kind: smmu, smrs: 64, context-banks: 32, unmatched-stream: fault, register-at-boot: false}
  devices:
    - {name: nic0, pci: {address: "0000:10:00.0", acs: false}, iommu: smmu0, stream-ids: [0x1000], driver: mlx5_core}
    - {name: nic1, pci: {address: "0000:10:00.1", acs: false}, iommu: smmu0, stream-ids: [0x1001], driver: mlx5_core}
    - {name: nic2, pci: {address: "0000:11:00.0", acs: false}, iommu: smmu0, stream-ids: [0x1100], driver: mlx5_core}
    - {name: nic3, pci: {address: "0000:11:00.1", acs: false}, iommu: smmu0, stream-ids: [0x1101], driver: mlx5_core}
    - {name: nic4, pci: {address: "0000:12:00.0", acs: false}, iommu: smmu0, stream-ids: [0x1200], driver: mlx5_core}
    - {name: nic5, pci: {address: "0000:12:00.1", acs: false}, iommu: smmu0, stream-ids: [0x1201], driver: mlx5_core}
    - {name: nic6, pci: {address: "0000:13:00.0", acs: false}, iommu: smmu0, stream-ids: [0x1300], driver: mlx5_core}
    - {name: nic7, pci: {address: "0000:13:00.1", acs: false}, iommu: smmu0, stream-ids: [0x1301], driver: mlx5_core}
    - {name: nvme0, pci: {address: "0000:20:00.0"}, iommu: smmu0, stream-ids: [0x2000], driver: nvme}
    - {name: nvme1, pci: {address: "0000:21:00.0"}, iommu: smmu0, stream-ids: [0x2100], driver: nvme}
    - {name: nvme2, pci: {address: "0000:22:00.0"}, iommu: smmu0, stream-ids: [0x2200], driver: nvme}
    - {name: nvme3, pci: {address: "0000:23:00.0"}, iommu: smmu0, stream-ids: [0x2300], driver: nvme}
    - {name: gpu0, pci: {address: "0000:40:00.0"}, iommu: smmu1, stream-ids: [0x4000], driver: amdgpu}
    - {name: gpu1, pci: {address: "0000:41:00.0"}, iommu: smmu1, stream-ids: [0x4100], driver: amdgpu}
    - {name: gpu2, pci: {address: "0000:42:00.0"}, iommu: smmu1, stream-ids: [0x4200], driver: amdgpu}
    - {name: gpu3, pci: {address: "0000:43:00.0"}, iommu: smmu1, stream-ids: [0x4300], driver: amdgpu}
    - {name: gpu4, pci: {address: "0000:44:00.0"}, iommu: smmu1, stream-ids: [0x4400], driver: vfio-pci}
    - {name: gpu5, pci: {address: "0000:45:00.0"}, iommu: smmu1, stream-ids: [0x4500], driver: vfio-pci}
    - {name: gpu6, pci: {address: "0000:46:00.0"}, iommu: smmu1, stream-ids: [0x4600], driver: vfio-pci}
    - {name: gpu7, pci: {address: "0000:47:00.0"}, iommu: smmu1, stream-ids: [0x4700], driver: vfio-pci}
    - {name: tb0, pci: {address: "0000:60:00.0"}, iommu: smmu1, stream-ids: [0x6000], untrusted: true, dma-mask: 32, driver: xhci_hcd}
    - {name: tb1, pci: {address: "0000:61:00.0"}, iommu: smmu1, stream-ids: [0x6100], untrusted: true, dma-mask: 32, driver: xhci_hcd}
    - {name: tb2, pci: {address: "0000:62:00.0"}, iommu: smmu1, stream-ids: [0x6200], untrusted: true, dma-mask: 32, driver: xhci_hcd}
    - {name: tb3, pci: {address: "0000:63:00.0"}, iommu: smmu1, stream-ids: [0x6300], untrusted: true, dma-mask: 32, driver: xhci_hcd}
    - {name: sas0, pci: {address: "0001:80:00.0"}, iommu: smmu2, stream-ids: [0x5000]}
    - {name: sas1, pci: {address: "0001:81:00.0"}, iommu: smmu2, stream-ids: [0x5010]}
    - {name: sas2, pci: {address: "0001:82:00.0"}, iommu: smmu2, stream-ids: [0x5020]}
    - {name: sas3, pci: {address: "0001:83:00.0"}, iommu: smmu2, stream-ids: [0x5030]}
    - {name: sas4, pci: {address: "0001:84:00.0"}, iommu: smmu2, stream-ids: [0x5040]}
    - {name: sas5, pci: {address: "0001:85:00.0"}, iommu: smmu2, stream-ids: [0x5050]}
    - {name: sas6, pci: {address: "0001:86:00.0"}, iommu: smmu2, stream-ids: [0x5060]}
    - {name: sas7, pci: {address: "0001:87:00.0"}, iommu: smmu2, stream-ids: [0x5070]}
    - {name: dma-engine0, bus: platform, iommu: smmu0, stream-ids: [0x7000, 0x7001], driver: pl330}
    - {name: legacy-uart, bus: platform}
workload:
  - note: smmu2's driver has not loaded yet - its devices wait, and their DMA is refused
    expect:
      probe-state: {device: sas0, state: deferred}
      group-count: 21
  - dma-write: {device: sas0, iova: 0x1000, data: "00"}
    expect: {faults: 1}
  - register-iommu: smmu2
    expect:
      probe-state: {device: sas0, state: probed}
      group-count: 29
  - note: multi-function NICs without ACS share a group; NVMe functions are isolated
    expect:
      same-group: [nic0, nic1]
      group: {device: nvme0, id: 4}
  - note: lazy by default (DMA-FQ); untrusted Thunderbolt ports are forced to strict DMA
    expect:
      domain-type: {device: nic0, type: DMA-FQ}
  - expect:
      domain-type: {device: tb0, type: DMA}
  - note: the NIC driver maps a receive buffer and the device writes a packet through the SMMU
    iova-alloc: {device: nic0, length: 16K, as: rx}
  - map: {device: nic0, iova: $rx, length: 16K, prot: rw}
    expect: ok
  - dma-write: {device: nic0, iova: $rx+0x1ff0, data: "text:hello through the SMMU"}
    expect: {faults: 0}
  - dma-read: {device: nic0, iova: $rx+0x1ff0, length: 22}
    expect: {data: "text:hello through the SMMU"}
  - note: a driver bug - unmap with a bad size; caught and reported, nothing crashes
    unmap: {device: nic0, iova: $rx+0x2000, length: 32K}
    expect: {bytes: 0x2000}
  - iova-free: {device: nic0, iova: $rx+0x2000, length: 32K}
    expect: {warning: iovaFreeInsideAllocation}
  - dma-read: {device: nic0, iova: $rx+0x3000, length: 4}
    expect: {faults: 1}
  - note: the same kind of bug through the DMA API - the debug layer names the bad call
    dma-map-page: {device: nvme0, length: 8K, direction: to-device, as: blk}
  - dma-unmap-page: {device: nvme0, address: $blk, length: 4K, direction: to-device}
    expect: {warning: dmaUnmapWrongSize, dma: {device: nvme0, live-mappings: 0}}
  - note: lazy vs strict - after the unmap, nvme1 (lazy) still reads through a stale IOTLB entry
    dma-map-page: {device: nvme1, length: 4K, direction: to-device, data: "text:secret", as: old}
  - dma-read: {device: nvme1, iova: $old, length: 6}
  - dma-unmap-page: {device: nvme1, address: $old, length: 4K, direction: to-device}
  - dma-read: {device: nvme1, iova: $old, length: 6}
    expect: {data: "text:secret", warning: dmaStaleTLBAccess}
  - note: tb0 is untrusted, so strict - the same read faults at once
    dma-map-page: {device: tb0, length: 4K, direction: to-device, data: "text:secret", as: tbold}
  - dma-read: {device: tb0, iova: $tbold, length: 6}
  - dma-unmap-page: {device: tb0, address: $tbold, length: 4K, direction: to-device}
  - dma-read: {device: tb0, iova: $tbold, length: 6}
    expect: {faults: 1}
  - note: a guest gets gpu4 through VFIO; a vendor driver pins a page and must give it back
    vfio-open-group: gpu4
  - vfio-set-container: gpu4
  - vfio-set-iommu: type1v2
    expect: {domain-type: {device: gpu4, type: unmanaged}}
  - vfio-map: {iova: 0x40000000, length: 2M}
    expect: ok
  - vfio-register-driver: {name: vgpu, on-unmap: unpin}
  - vfio-pin: {driver: vgpu, iova: 0x40001000, count: 1}
  - vfio-unmap: {iova: 0x40000000, length: 2M}
    expect: {bytes: 0x200000, pinned-pages: {driver: vgpu, count: 0}}
  - advance-clock: 10ms
"""#
}
