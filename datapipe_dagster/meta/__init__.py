"""Row and transform metadata: the metadata tables, the key hash and the SQL that reads and writes them."""
