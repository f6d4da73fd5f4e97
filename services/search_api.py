"""Search API entry points (thin; all logic is in `wherecnn.search.api`).

- `uvicorn services.search_api:app` — plain ASGI, one process;
- `serve run services.search_api:serve_app` / `services/serve_config.yaml` / the RayService `import_path` —
  Ray Serve. Settings (store, checkpoint, limits, API key) come from `WHERECNN_*` env vars.
"""

from wherecnn.search.api import create_app
from wherecnn.search.serving import build_serve_app

app = create_app()
serve_app = build_serve_app()
