"""Directory-app entry for `bokeh serve server --args INDEX` (or `LSTMSEARCH_INDEX=INDEX`).

`lstmsearch serve INDEX` is the usual way in (an embedded server, see `lstmsearch.serve`);
this file lets the stock `bokeh serve` run the same app. The index and the query thread pool
are opened once per server process (cached in `server.fetch.shared_for`), not per session.
"""

import os
import sys

from bokeh.io import curdoc

from server.app import build
from server.fetch import shared_for

path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LSTMSEARCH_INDEX")
if not path:
    raise SystemExit("give the index: bokeh serve server --args INDEX (or set LSTMSEARCH_INDEX)")
shared, executor = shared_for(path)
build(curdoc(), shared, executor)
