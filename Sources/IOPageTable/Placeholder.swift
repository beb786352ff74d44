// The IO page-table formats; see IOPageTable.swift.
