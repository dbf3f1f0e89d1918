"""`coa serve`: strategies behind an OpenAI-compatible HTTP API, a job API and a web page.

Needs the [serve] extra. `app.create_app` builds the FastAPI application; `runs` executes
runs on the server's event loop and streams their events; `store` keeps uploaded documents
and job runs in SQLite; `protocol` holds the request bodies and the chat conversion.
The API is described in docs/serve.md.
"""
