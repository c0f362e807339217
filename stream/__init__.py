"""The streaming room: Kafka adapters, local services, the processor loop and snapshots."""
