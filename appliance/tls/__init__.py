"""TLS at the interception point: the regcache CA and leaves minted per SNI name."""
