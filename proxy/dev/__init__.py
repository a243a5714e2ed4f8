"""Development-only helpers (`idgate demo`, `idgate token`): a local issuer and an echo upstream.
They refuse to listen on anything but loopback."""
