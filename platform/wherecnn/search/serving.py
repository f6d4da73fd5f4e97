"""Ray Serve wrapping of the search API: one deployment whose ingress is the FastAPI app.

The FastAPI app is built in the driver and shipped to replicas; the engine (model + store) loads lazily inside
each replica on first use, so a replica starts fast and reports not-ready through `/readyz` instead of
crash-looping when the index is missing.
"""

from __future__ import annotations

from typing import Any

DEPLOYMENT_NAME = "SearchAPI"


def build_serve_app(settings: Any = None, *, num_replicas: int = 1, num_cpus: float = 1.0) -> Any:
    """A bound Ray Serve application (`serve run services.search_api:serve_app`, RayService import_path)."""
    from ray import serve

    from wherecnn.search.api import create_app

    fastapi_app = create_app(settings)

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        health_check_period_s=10,
    )
    @serve.ingress(fastapi_app)
    class SearchAPI:
        """Each replica holds one engine; requests run in FastAPI's thread pool behind the engine's lock."""

    return SearchAPI.bind()
