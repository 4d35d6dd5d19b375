"""The serving core, free of protobuf: data plane, registry, runtime, input checks, sessions."""
