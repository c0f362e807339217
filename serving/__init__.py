"""The serving room: an HTTP API that only reads verified snapshots from the store.

`serving.app.create_app` is the app factory, `stream.store.follower` keeps each process on the
serving version of every model, `serving.runner.serve` runs uvicorn with one or more workers.
"""
