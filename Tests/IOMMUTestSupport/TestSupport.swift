import IOMMUBase
