"""Who may command this gateway, and the record of what it did: signed commands (`jws`), trusted issuers and
their rights (`trust`), replay protection (`replay`) and the hash-chained audit trail (`audit`)."""
