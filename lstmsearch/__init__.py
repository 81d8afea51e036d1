"""lstmsearch: an LSTMVis-style search engine for the hidden states of recurrent language models.

The data flows corpus -> tokens -> model -> states -> store -> query -> view:
`corpus`, `tokenize`, `models` (and `train`), `extract`, `store`/`index`, `query`, `server/`.
"""

__version__ = "0.1.0"


def open_index(path, **options):
    """Open an index directory built by `lstmsearch index` (see `lstmsearch.index.Index`)."""
    from lstmsearch.index import open_index as _open

    return _open(path, **options)


__all__ = ["open_index", "__version__"]
