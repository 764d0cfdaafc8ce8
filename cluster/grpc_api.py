"""gRPC ingress: `raymask.v1.Masking/Mask` (cluster/mask_service.proto) on Ray Serve's gRPC
proxy, the same service as `POST /v1/streams/{stream}/mask?view=ROLE`.

The RPC is a method of the same Serve deployment (`MaskIngress.Mask`), so a gRPC body goes
through the same checks, the same path to the masking (`MaskIngress._answer`: HTTP and gRPC
callers share its `@serve.batch` queues where a stream has them) and the same kernels, and
comes back in its own format. Credentials come as metadata (`x-api-key`, `authorization`), as
HTTP headers do. An HTTP error status becomes a gRPC status with the same one-line message as
details; per-record errors are in the reply.

`raymask serve --grpc-port P` turns it on (Serve needs the servicer function `SERVICER` when it
starts); callers send the metadata `application: raymask` (Serve routes by application name).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["SERVICER", "mask_rpc", "reply"]

SERVICER = "raymask.cluster.mask_service_pb2_grpc.add_MaskingServicer_to_server"


def _status(http: int) -> Any:
    import grpc

    return {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        404: grpc.StatusCode.NOT_FOUND,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        415: grpc.StatusCode.INVALID_ARGUMENT,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    }.get(http, grpc.StatusCode.INTERNAL)


async def mask_rpc(
    core: Any, answer: Callable[[Any], Awaitable[Any]], request: Any, grpc_context: Any
) -> Any:
    """The Mask RPC over an IngressCore `core`; `answer` is the deployment's `_answer`."""
    from raymask.cluster.serve_app import Answer, _error

    headers = {}
    if grpc_context is not None:
        headers = {k.lower(): v for k, v in grpc_context.invocation_metadata()}
    stream, view = request.stream, request.view or None
    if len(request.body) > core.max_body_bytes:
        a = _error(413, f"the body is over {core.max_body_bytes} bytes")
    elif isinstance(v := core.authorize(headers, stream, view), Answer):
        a = v
    else:
        parsed = core.parse(stream, v, request.body, request.content_type or None)
        a = parsed if isinstance(parsed, Answer) else await answer(parsed)
    return reply(a, grpc_context)


def reply(a: Any, grpc_context: Any) -> Any:
    """A MaskReply from an HTTP Answer; an error status is set on the context instead."""
    from raymask.cluster.mask_service_pb2 import MaskReply, RecordError

    if a.status != 200:
        if grpc_context is not None:
            grpc_context.set_code(_status(a.status))
            grpc_context.set_details(json.loads(a.body)["error"])
        return MaskReply()
    errs = json.loads(a.headers.get("raymask-errors", "[]"))
    return MaskReply(
        body=a.body,
        content_type=a.media_type,
        records=int(a.headers["raymask-records"]),
        error_count=int(a.headers["raymask-error-count"]),
        errors=[RecordError(index=e["index"], reason=e["reason"]) for e in errs],
        policy_version=int(a.headers["raymask-policy-version"]),
    )
