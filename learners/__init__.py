"""The pure learning room: model specs, the event-time learning core and snapshot bytes.

Nothing here imports Kafka, Redis or HTTP libraries (a test enforces it).
"""
