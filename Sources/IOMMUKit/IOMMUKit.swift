// The umbrella module: one import for users who want the whole stack.
@_exported import IOMMUBase
@_exported import PhysicalMemory
@_exported import IOPageTable
@_exported import IOVAAllocator
@_exported import IOMMUCore
@_exported import VFIOType1
@_exported import VirtioIOMMU
@_exported import IOMMUHardware
@_exported import DMAMapping
