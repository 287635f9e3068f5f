"""Reading files: one chunked reader of every format, strict for collect and lenient for scoring; text normalisation."""
