"""`coa serve`: strategies behind an OpenAI-compatible HTTP API, a job API and a web page.

Needs the [serve] extra. `app.create_app` builds the FastAPI application and holds the routes;
`guard` is the middleware that admits requests (host, origin, key, body); `errors` holds
OpenAI's error bodies, the handlers that make every failure one, and the schema that says so;
`protocol` holds the request bodies (a job's multipart form too) and the chat conversion;
`wire` the replies in OpenAI's format (completions, stream chunks, server-sent events);
`options` merges the operator's strategy options with a request's and keeps places the
operator's; `runs` executes runs on the server's event loop and streams their events; `store`
keeps uploaded documents and job runs in SQLite. The API is described in docs/serve.md.
"""
