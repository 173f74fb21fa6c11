"""Publishing: MQTT payloads, topics, Home Assistant discovery, the publisher and its on-disk outbox."""
