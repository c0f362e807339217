"""Asynchronous (Kafka request → answer) and batch predictions; see `stream.predict.worker`
and `stream.predict.batch`."""
