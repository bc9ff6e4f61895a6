"""The ingress: verify, claim, enqueue, acknowledge. Nothing here parses business payloads."""
