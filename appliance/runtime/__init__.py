"""What the composition root builds parts with: the CA policy, the offline switch, the way
out to upstream (resolver, credentials, target policy), systemd notify."""
