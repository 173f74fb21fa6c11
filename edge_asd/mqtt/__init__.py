"""Publishing, in the order a message travels: payloads (payloads.py) on topics (topics.py) are written
to the on-disk outbox (outbox.py) and drained to the broker by the publisher (publisher.py), configured by
one MqttSettings (settings.py); discovery.py announces the entities to Home Assistant."""
