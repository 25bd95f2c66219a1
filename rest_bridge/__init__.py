"""REST/JSON bridge in front of the gRPC prediction server: the same contract, thin, fast and documented."""
