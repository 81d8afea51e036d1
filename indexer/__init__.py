"""The indexing job: (corpus, model) -> index directory. See `indexer.build.build_index`."""
