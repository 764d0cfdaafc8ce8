"""The baseline of issue 13's HTTP figure: a trivial Serve deployment on raymask's route,
`POST /v1/streams/{stream}/mask`, that answers with the body it got.

It runs with the replica options of raymask's own ingress (CPUs per replica, requests in flight,
autoscaling), read from cluster/serve_app.py's deployment, so a ratio of the two measures what the
masking path costs over Serve itself, not a difference in configuration.
"""

from typing import Any

from fastapi import FastAPI, Response  # real annotations (no __future__): FastAPI reads them
from fastapi import Request as HttpRequest

__all__ = ["build_echo_app", "ECHO_APP"]

ECHO_APP = "echo"


def _ingress_options() -> dict[str, Any]:
    from raymask.cluster.serve_app import _make_deployment

    d = _make_deployment()
    auto = d._deployment_config.autoscaling_config  # noqa: SLF001 (Serve keeps it there)
    return {
        "ray_actor_options": dict(d.ray_actor_options or {}),
        "max_ongoing_requests": d.max_ongoing_requests,
        "autoscaling_config": auto.model_dump(exclude_defaults=True) if auto is not None else None,
    }


def build_echo_app(replicas: int | None = None) -> Any:
    """The Serve application (bind it with `serve.run(build_echo_app(), route_prefix="/")`);
    `replicas`: a fixed count, as `build_app(replicas=)` gives raymask's ingress."""
    from ray import serve

    api = FastAPI(title="raymask echo baseline")

    @serve.ingress(api)
    class EchoIngress:
        @api.post("/v1/streams/{stream}/mask")
        async def mask(
            self, stream: str, request: HttpRequest, view: str | None = None
        ) -> Response:
            body = await request.body()
            return Response(body, 200, media_type=request.headers.get("content-type"))

        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok"}

    opts = {k: v for k, v in _ingress_options().items() if v is not None}
    if replicas is not None:
        opts.pop("autoscaling_config", None)
        opts["num_replicas"] = replicas
    return serve.deployment(EchoIngress, name="EchoIngress", **opts).bind()
