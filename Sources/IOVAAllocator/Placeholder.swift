// The IOVA allocator; see IOVADomain.swift.
