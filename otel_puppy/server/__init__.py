"""The service's front doors: the OTLP/HTTP receiver's decoding, and (later) the HTTP app."""
