"""otel_puppy as a stage of the trace pipeline: costs written onto spans, which go on downstream.

`enrich.py` (the attributes), `otlp.py` (onto a decoded OTLP request), `queue.py` and its
backends (the durable forward queue), `sender.py` (queue and deliver), `exporter.py` (the same
in-process, around an application's own exporter).
"""
