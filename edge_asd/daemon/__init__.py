"""``edge-asd run``: the monitoring daemon: configuration, audio sources, pipeline, lifecycle, web page."""
