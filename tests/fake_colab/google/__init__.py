# A namespace-style package, like the real `google` (google.protobuf etc. stay importable beside this stand-in).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
