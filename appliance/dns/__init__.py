"""DNS at the interception point: the responder (our sockets, dnslib as codec) and the
upstream resolver client that regcache itself uses, so it never resolves through itself."""
