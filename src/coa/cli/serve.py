"""`coa serve`: the strategies behind an OpenAI-compatible HTTP API, a job API and a web page."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import click

from coa.cli.common import cli, max_seconds_option, model_options, prompts_dir_option, stderr
from coa.config import Config
from coa.errors import InputError
from coa.extras import require

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "chainofagents" / "serve.sqlite"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless told otherwise).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", "api_keys", multiple=True, envvar="COA_API_KEY",
              help="A key clients must send as `Authorization: Bearer KEY` (repeatable) [env: COA_API_KEY].")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), help="A file of keys, one per line.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="A host name requests may name (repeatable). A loopback server answers only to loopback names "
                   "and these; another answers to any name unless this is given.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file of uploaded documents and job runs [default: $XDG_DATA_HOME/chainofagents/serve.sqlite].")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=16 * 2**20, show_default=True,
              help="Larger request bodies are refused with 413.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=4, show_default=True,
              help="Runs in flight per key; more are refused with 429.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Independent model calls in flight at once within a run.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="A strategy option for every strategy that has it (repeatable); requests' options go over "
                   "these. Options that name a place (rag's embed_url) are set only so: a request may not.")
@click.option("--docs", is_flag=True, help="Describe the API at /docs (a page of its own, nothing from a CDN) "
              "and /openapi.json.")
@prompts_dir_option
@lambda command: max_seconds_option(command, who="Each run stops", after="; a request's max_seconds may lower it")
@click.option("--seed", type=int, help="Sampling seed (a request's `seed` replaces it).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@lambda command: model_options(command, key_option="--backend-api-key")
def serve(host: str, port: int, api_keys: tuple[str, ...], api_key_file: Path | None, allowed_hosts: tuple[str, ...],
          store: Path | None,
          max_request_bytes: int, max_concurrent: int, concurrency: int, opts: tuple[str, ...], docs: bool,
          prompts_dir: Path | None, max_seconds: float | None, seed: int | None,
          log_level: str, model: str, base_url: str | None, api_key: str | None, embed_api_key: str | None, cache: Path | None, window: int, max_cu_tokens: int | None,
          temperature: float, timeout: float) -> None:
    """Serve the strategies over HTTP: OpenAI's chat completions, a job API and a page at /."""
    uvicorn = require("uvicorn", "serve", "coa serve")
    require("fastapi", "serve", "coa serve")
    require("multipart", "serve", "coa serve")  # python-multipart: uploads
    from coa.models.registry import load_model
    from coa.serve.app import create_app
    from coa.serve.options import operator_options
    from coa.strategies.options import parse_pairs

    # A blank key would match a request that sends none. (An unset or empty COA_API_KEY is no key;
    # one of spaces alone is a key the operator meant to set, and is refused as blank.)
    if any(not key.strip() for key in api_keys) or os.environ.get("COA_API_KEY", "x").isspace():
        raise InputError("--api-key (or COA_API_KEY): an empty or blank key is refused")
    keys = [key.strip() for key in api_keys] + read_keys(api_key_file)
    options = parse_pairs(opts)
    operator_options(options)  # a bad --opt is refused before the model loads
    backend = load_model(model, window=window, base_url=base_url, api_key=api_key, timeout=timeout, cache=cache)
    config = Config(window=window, max_cu_tokens=max_cu_tokens, temperature=temperature, seed=seed,
                    concurrency=concurrency, prompts_dir=prompts_dir, max_seconds=max_seconds,
                    embed_api_key=embed_api_key)
    listener = bind(host, port)
    # A loopback server answers only to loopback names: a web page whose name an attacker rebinds to
    # 127.0.0.1 cannot reach it.
    names = [*LOOPBACK_NAMES, *allowed_hosts] if is_loopback(host) else list(allowed_hosts) or None
    app = create_app(backend, config, store or default_store(), api_keys=keys, max_request_bytes=max_request_bytes,
                     max_concurrent=max_concurrent, allowed_hosts=names, options=options, docs=docs)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{listener.getsockname()[1]}"
    access = f"{len(keys)} API key(s)" if keys else "no API key: open to anyone who can reach it"
    stderr.print(f"coa serve: {where} (model {model}, window {window}; {access})", markup=False, highlight=False)
    if not keys and not is_loopback(host):
        stderr.print(f"warning: {host} is reachable from other machines and no --api-key is set", markup=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[listener])
    finally:
        backend.close()


def read_keys(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"--api-key-file {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"--api-key-file {path}: not UTF-8 text") from None
    if not keys:
        raise InputError(f"--api-key-file {path}: holds no key")
    return keys


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that a taken port or a bad address is one error line."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return listener


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
