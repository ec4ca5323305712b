"""No task left stuck: noticing work a JetStream consumer holds but does not deliver, and healing it."""
