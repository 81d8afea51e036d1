"""The lstmsearch web app (Bokeh): `server.app.build(doc, index)`; run it with `lstmsearch serve`."""
