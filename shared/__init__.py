"""What the ingress and the workers both need: configuration, signature schemes, the event
envelope, the database schema, Redis keys and errors."""
