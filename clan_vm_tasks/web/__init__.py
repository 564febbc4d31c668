"""``serve``: a local web dashboard over the same operations as the command line.

``address`` parses where to listen and which Host and Origin headers belong to it,
``guard`` refuses requests without the token or from elsewhere, ``api`` is the JSON
API (the command line's JSON), ``actions`` runs operations in worker threads,
``events`` pushes the VM list as it changes, ``console`` relays a serial console over
a websocket, ``assets`` is the page and its terminal widget, ``app`` puts them
together and ``server`` runs them on uvicorn. Nothing here imports a web library
until ``serve`` runs, so the other commands never pay for it.
"""
