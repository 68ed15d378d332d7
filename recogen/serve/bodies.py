"""Reading a request: the body within size and time limits, the image of an upload (multipart field
``file``, JSON ``{"image": base64}`` or a raw ``image/*`` body) and parameters merged from the query
string, form fields and JSON, so that a bad value gets the same 422 whichever way it came."""
# No `from __future__ import annotations`: FastAPI reads annotations at runtime.
import asyncio
import base64
import binascii
import json
import sys
from typing import Any, Sequence

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..tasks.params import Params
from .errors import ApiError

# Room for multipart headers / JSON keys around the image itself.
BODY_SLACK = 64 * 1024
GENERATE_BODY_LIMIT = 64 * 1024
# Seconds a client may take to send a request body: a stalled upload is answered 408 and its
# connection closed, instead of holding it (and its buffer) forever. uvicorn has no such timeout.
DEFAULT_BODY_TIMEOUT = 60.0


def _image_body_schema(params: type[Params]) -> dict[str, Any]:
    """OpenAPI request body of a predict endpoint (the body is read by hand to bound its size)."""
    fields = {k: v for k, v in params.model_json_schema()["properties"].items()}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image (PNG, JPEG, BMP, GIF, TIFF, WebP)"},
            **fields}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "byte", "description": "the image file, base64 (a data: URL is accepted)"},
            **fields}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}



async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes: never reads unbounded data;
    and 408 when it has not all arrived within ``timeout`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes "
                                "(start the server with a larger --max-upload-mb)", "too_large")
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise ApiError(413, f"request body over the limit of {limit} bytes (start the server with a "
                                        "larger --max-upload-mb)", "too_large")
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s (the server's --body-timeout); "
                            "send it again over a faster connection", "timeout") from None
    return bytes(buf)


def _parse_json(body: bytes, hint: str) -> Any:
    """``json.loads`` of a request body; a 400 naming the problem for anything it refuses."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, f"the body is not valid JSON; {hint}", "bad_json") from None
    except RecursionError:  # [[[[...]]]]: deeper than Python's recursion limit
        raise ApiError(400, f"the JSON body is nested too deeply to read; {hint}", "bad_json") from None
    except ValueError:  # an integer over Python's digit limit (int_max_str_digits)
        raise ApiError(400, f"the JSON body holds a number of more than {sys.get_int_max_str_digits()} digits; "
                            f"{hint}", "bad_json") from None


async def _json_params(request: Request, limit: int, timeout: float, example: str) -> dict[str, Any]:
    """The parameters of an endpoint that reads no image: an application/json object body (or none);
    415 for another content type, 400 for malformed JSON, 422 for JSON that is not an object."""
    body = await _read_body(request, limit, timeout)
    if not body:
        return {}
    ctype = _content_type(request)
    if ctype != "application/json":
        raise ApiError(415, f"unsupported content type {ctype or '(none)'!r}: send parameters in the "
                            "query string or as an application/json body", "content_type")
    extra = _parse_json(body, f"send the parameters as a JSON object, e.g. {example}")
    if not isinstance(extra, dict):
        raise ApiError(422, "the JSON body must be an object of parameters", "invalid_params")
    return extra


def _b64decode(s: Any, what: str) -> bytes:
    if not isinstance(s, str):
        raise ApiError(422, f"{what} must be a base64 string", "invalid_params")
    if s.startswith("data:") and "," in s:  # a data: URL, as a browser's FileReader gives
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64", "bad_base64") from None


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _image_and_params(request: Request, max_upload: int, timeout: float) -> tuple[bytes, dict[str, Any]]:
    """``(image bytes, body params)`` from a multipart, JSON or raw image body; 413/415/400 otherwise."""
    images, params = await _images_and_params(request, max_upload, timeout)
    return images["image"], params


# An image a request carries: (multipart field, JSON key, what an error message calls it).
IMAGE = ("file", "image", "image")
MASK = ("mask", "mask", "mask")


async def _images_and_params(request: Request, max_upload: int, timeout: float,
                             files: Sequence[tuple[str, str, str]] = (IMAGE,)) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``({JSON key: image bytes}, body params)`` of a request carrying every image of ``files`` (each
    at most ``max_upload`` bytes): multipart fields, base64 JSON keys, or (one image only) a raw
    ``image/*`` body; 413/415/400/422 otherwise."""
    ctype = _content_type(request)
    k = len(files)
    # Parsing a body of up to --max-upload-mb is CPU work (multipart boundaries, JSON, base64): it runs
    # in the thread pool, so the event loop keeps answering other requests (/healthz among them) while
    # large uploads arrive.
    if ctype == "multipart/form-data":
        body = await _read_body(request, k * max_upload + BODY_SLACK, timeout)
        images, params = await run_in_threadpool(_parse_multipart_files, request.scope, body, max_upload + BODY_SLACK,
                                                 files)
    elif ctype == "application/json":
        body = await _read_body(request, k * (max_upload * 4 // 3 + 4) + BODY_SLACK, timeout)
        images, params = await run_in_threadpool(_parse_json_images, body, files)
    elif ctype.startswith("image/") and k == 1:
        images, params = {files[0][1]: await _read_body(request, max_upload, timeout)}, {}
    else:
        if k == 1:
            how = f"a '{files[0][0]}' field, application/json with a base64 '{files[0][1]}', or an image/* body"
        else:
            how = (" and ".join(f"'{f}'" for f, _, _ in files) + " fields, or application/json with base64 "
                   + " and ".join(f"'{key}'" for _, key, _ in files))
        raise ApiError(415, f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with {how}",
                       "content_type")
    for (_, key, noun) in files:
        if len(images[key]) > max_upload:
            raise ApiError(413, f"{noun} of {len(images[key])} bytes is over the limit of {max_upload} bytes "
                                "(start the server with a larger --max-upload-mb)", "too_large")
    return images, params


def _parse_multipart_files(scope, body: bytes, max_part: int,
                           files: Sequence[tuple[str, str, str]]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``({JSON key: bytes} of the file fields of files, the other form fields)`` of a multipart
    ``body`` (already read, within its limit) parsed by Starlette's ``Request.form``; 400/422 for a
    malformed one or a missing file.

    Called in a worker thread: ``form`` is async, so it gets an event loop of its own there.
    """
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    async def receive() -> dict[str, Any]:  # the request's body, replayed in one message
        return {"type": "http.request", "body": body, "more_body": False}

    names = {field for field, _, _ in files}

    async def parse() -> tuple[dict[str, bytes], dict[str, Any]]:
        try:
            form = await Request(scope, receive).form(max_files=len(files), max_fields=20, max_part_size=max_part)
        except (MultiPartException, StarletteHTTPException) as e:  # the latter when scope has the app
            message = e.message if isinstance(e, MultiPartException) else e.detail
            raise ApiError(400, f"malformed multipart body: {message}", "bad_multipart") from None
        try:
            images = {}
            for field, key, noun in files:
                upload = form.get(field)
                if not isinstance(upload, UploadFile):
                    raise ApiError(422, f"the multipart body needs the {noun} in a file field named '{field}' "
                                        f"(curl -F {field}=@{noun}.png ...)", "invalid_params")
                images[key] = await upload.read()
            return images, {k: v for k, v in form.multi_items() if k not in names}
        finally:
            await form.close()  # a part over 1 MiB was spooled to a temporary file: delete it now

    return asyncio.run(parse())


def _parse_json_images(body: bytes, files: Sequence[tuple[str, str, str]]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``({key: image bytes}, the other keys)`` of a JSON body holding each of ``files``' keys as base64;
    400/422 otherwise."""
    keys = [key for _, key, _ in files]
    example = ", ".join(f'"{key}": "<base64>"' for key in keys)
    obj = _parse_json(body, f"send {{{example}}}")
    for _, key, noun in files:
        if not isinstance(obj, dict) or key not in obj:
            a = "an" if key[0] in "aeiou" else "a"
            raise ApiError(422, f"the JSON body needs {a} \"{key}\" key holding the base64 {noun} file", "invalid_params")
    return {key: _b64decode(obj.pop(key), key) for key in keys}, obj


def _merge_params(cls: type[Params], query: Params, extra: dict[str, Any]) -> Params:
    """Query parameters, overridden by those in the body; validated together (422 on a bad value)."""
    if not extra:
        return query
    try:
        return cls.model_validate({**query.model_dump(exclude_unset=True, by_alias=True), **extra})
    except ValidationError as e:
        raise ApiError(422, "invalid parameters: " + _validation_text(e.errors()), "invalid_params") from None


def _validation_text(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
