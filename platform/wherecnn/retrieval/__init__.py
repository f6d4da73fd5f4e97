"""Retrieval: how a query vector becomes an answer (coarse store retrieval, then a fine stage in metres).

`settings.RetrievalSettings` (what an index version records), `views` (a tile's cell cut from its raster at
other centres, and where those are), `path.Retriever` (the one path the engine and the served evaluation use).
"""
