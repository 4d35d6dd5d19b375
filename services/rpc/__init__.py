"""The gRPC layer, the only place protobuf lives on the server side: servicers, codecs,
the interceptor and the server's assembly."""
